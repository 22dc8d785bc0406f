"""Wire formats shared by the control plane and both data paths.

* :mod:`phantom.wire.phantom`   -- Phantom's own format, re-exported here so
  that ``from phantom import wire; wire.Initiation`` keeps meaning it;
* :mod:`phantom.wire.wireguard` -- WireGuard v1, byte for byte;
* :mod:`phantom.wire.demux`     -- which protocol (and message) a datagram on
  the shared UDP port is.
"""

from .phantom import *  # noqa: F401,F403
from .phantom import _EXPECTED_SIZE  # noqa: F401  (kept reachable as before)
