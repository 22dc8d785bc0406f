"""Which transport suites a Phantom offers and accepts (issue 23): the
configuration side of the negotiation.  The negotiation itself is in the
handshake payloads (:mod:`.handshake`, :func:`.handshake.choose_suite`) and
the offer policy in the protocol object (:mod:`.protocol`)."""

from __future__ import annotations

import logging
from typing import Iterable, Optional

from ... import crypto, wire

log = logging.getLogger("phantom.control")


def default_suites() -> tuple:
    """The suites a Phantom offers when ``[interface] ciphers`` is not set:
    AEGIS-256 when libsodium has it and runs it on AES hardware
    (:func:`phantom.crypto.aes_hardware`: AES-NI + AVX, or ARM's crypto
    extensions, libsodium's runtime checks), and always secretbox."""
    if crypto.aegis256_available() and crypto.aes_hardware():
        return (wire.Suite.AEGIS256, wire.Suite.SECRETBOX)
    return (wire.Suite.SECRETBOX,)


def configured_suites(names: Optional[Iterable[str]]) -> tuple:
    """``[interface] ciphers`` (names, already checked by the config parser) as
    suites, best first; None: :func:`default_suites`.  ValueError when a
    listed suite cannot run here (aegis256 with a libsodium before 1.0.19)."""
    if names is None:
        return default_suites()
    suites = sorted({wire.SUITE_NAMES[n] for n in names}, key=wire.SUITE_PREFERENCE.index)
    if not suites:
        raise ValueError("no cipher suite left")
    if wire.Suite.AEGIS256 in suites:
        if not crypto.aegis256_available():
            raise ValueError("aegis256 needs libsodium 1.0.19 or later (crypto_aead_aegis256)")
        if not crypto.aes_hardware():
            log.warning("ciphers: aegis256 is listed but this CPU has no AES instructions libsodium "
                        "uses (AES-NI + AVX, ARM crypto): it runs in software, slower than secretbox")
    return tuple(suites)


def peer_suites(names: Optional[Iterable[str]]) -> Optional[tuple]:
    """A [[peer]]'s own ``ciphers`` as suites; None (use the interface's) when unset."""
    return None if names is None else configured_suites(names)
