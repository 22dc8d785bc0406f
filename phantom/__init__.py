"""Phantom: a peer-to-peer encrypted tunnel daemon.

Package layout (README.md, "Layout"; docs/architecture.md):

* ``phantom.wire``, ``phantom.crypto``, ``phantom.constants`` -- shared by both planes.
* ``phantom.dataplane`` and ``phantom.fastpath`` -- packets: the DataPath
  contract, the reference data path and the Cython one (``phantomd --fast``).
  They import nothing above them.
* ``phantom.control`` -- the sans-IO core (engine, peers, actions);
  ``phantom.protocols`` -- Phantom's and WireGuard's handshakes; the roles
  ``phantom.nat``, ``phantom.rendezvous``, ``phantom.relay``, ``phantom.directory``.
* ``phantom.node`` -- phantomd: the one package that wires the two planes together;
  ``phantom.http`` -- its HTTP server parts; ``phantom.cli`` -- the ``phantom`` command.
"""

__version__ = "0.1.0"
