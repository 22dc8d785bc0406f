"""The network-namespace rig, in one name: ``from phantomlab import netns``.

Throw-away topologies, daemons and packet capture for the end-to-end tests
(tests/conftest.py), ``phantom demo``, ``phantom verify`` and the bench/
scripts.  It needs root, iproute2 (``ip``) and, for captures, tcpdump; NAT
topologies also need iptables and conntrack.  The rig is split by job and
this module gathers the public names of its parts:

  phantomlab.namespaces  named namespaces, commands, sockets inside a
                         namespace, the registry, cleanup, sweep and the
                         netns gate (read its docstring for how names and
                         cleanup work);
  phantomlab.topology    hosts on veth pairs and bridges, NAT routers, the
                         small internet of home networks;
  phantomlab.daemons     phantomd (or another daemon) inside a namespace;
  phantomlab.capture     tcpdump in a namespace and a pcap reader.
"""

from __future__ import annotations

from .capture import *      # noqa: F401,F403
from .capture import __all__ as _capture
from .daemons import *      # noqa: F401,F403
from .daemons import __all__ as _daemons
from .namespaces import *   # noqa: F401,F403
from .namespaces import __all__ as _namespaces
from .topology import *     # noqa: F401,F403
from .topology import __all__ as _topology

__all__ = [*_namespaces, *_topology, *_daemons, *_capture]
