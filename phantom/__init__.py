"""Phantom: a peer-to-peer encrypted tunnel daemon.

Package layout (see README.md, "Layout"):

* ``phantom.wire``, ``phantom.crypto``, ``phantom.constants`` -- shared by both planes.
* ``phantom.dataplane`` -- packets: TUN/TAP/UDP I/O, the reference data path,
  replay window, allowed-IPs routing, firewall tables.  Never imports the
  control plane.
* ``phantom.fastpath`` -- the Cython data path (``phantomd --fast``).
* ``phantom.control`` -- handshake, timers, peers, config, keys, HTTP API,
  key directory.
* ``phantom.daemon`` -- the one module that wires the two planes together.
"""

__version__ = "0.1.0"
