"""Wire formats shared by the control plane and both data paths.

* :mod:`phantom.wire.framing`   -- what both protocols' messages share: the
  header check, the cookie reply, the transport header, the MAC regions;
* :mod:`phantom.wire.phantom`   -- Phantom's own format, re-exported here so
  that ``from phantom import wire; wire.Initiation`` keeps meaning it;
* :mod:`phantom.wire.wireguard` -- WireGuard v1, byte for byte;
* :mod:`phantom.wire.demux`     -- which protocol (and message) a datagram on
  the shared UDP port is;
* :mod:`phantom.wire.ciphers`   -- the transport cipher a keypair carries.
"""

from .phantom import *  # noqa: F401,F403
