"""WireGuard's mac1, mac2 and cookie replies (whitepaper 5.4.4 and 5.4.7):
the shared mechanism (:mod:`phantom.protocols.cookie`) over BLAKE2s::

    mac1   = MAC(HASH(LABEL_MAC1 || Spub_m'), msg_alpha)
    mac2   = MAC(cookie, msg_beta), or 16 zero bytes without a fresh cookie
    cookie = MAC(R_m, A_m')          R_m: random, replaced every 120 s;
                                     A_m': source IP || source port
    reply  = XAEAD(HASH(LABEL_COOKIE || Spub_m), nonce[24], cookie, mac1 of the message)

MAC and HASH are BLAKE2s (:mod:`.symmetric`); XAEAD is libsodium's
XChaCha20-Poly1305.
"""

from __future__ import annotations

from .. import cookie
from .symmetric import HASH, LABEL_COOKIE, LABEL_MAC1, MAC

MACS = cookie.MacSuite("blake2s", HASH, MAC, LABEL_MAC1, LABEL_COOKIE)


class WgCookieChecker(cookie.CookieChecker):
    """Checks mac1/mac2 of WireGuard messages to us and writes cookie replies."""

    macs = MACS


class WgCookieGenerator(cookie.CookieGenerator):
    """Adds mac1/mac2 to WireGuard messages to one peer and takes its cookie replies."""

    macs = MACS
