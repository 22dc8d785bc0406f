"""Which transport cipher a keypair uses, named once for both planes.

The control plane decides it when a handshake completes (the protocol
object's ``cipher_of``, :mod:`phantom.protocols.registry`) and puts it in
the keypair it installs; the data paths seal and open with it
(:mod:`phantom.dataplane.ciphers`, the fast path's keypair slots).  So it
lives here, below both, with the wire formats.
"""

from __future__ import annotations

import enum

from .phantom import Suite


class CipherKind(enum.IntEnum):
    """Also the ``cipher`` field of the fast path's keypair slots."""

    SECRETBOX = 0              # Phantom, suite secretbox
    CHACHA20POLY1305 = 1       # WireGuard
    AEGIS256 = 2               # Phantom, suite aegis256


# Phantom's negotiated suites (wire.Suite) and the cipher each puts in a keypair.
SUITE_CIPHER = {Suite.SECRETBOX: CipherKind.SECRETBOX, Suite.AEGIS256: CipherKind.AEGIS256}
