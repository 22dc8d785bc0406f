"""Phantom's mac1, mac2 and cookie replies: the shared mechanism
(:mod:`phantom.protocols.cookie`) over BLAKE2b, Phantom's hash::

    mac1_key(S)   = BLAKE2b-256(LABEL_MAC1 || S)
    cookie_key(S) = BLAKE2b-256(LABEL_COOKIE || S)
    mac(key, x)   = BLAKE2b-128 keyed with ``key``
"""

from __future__ import annotations

from ... import crypto
from ...constants import LABEL_COOKIE, LABEL_MAC1
from .. import cookie
from ..cookie import KEY_SIZE, MAC_SIZE, address_bytes  # noqa: F401  (the mechanism's, for callers)


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2b with a 16-byte output."""
    return crypto.blake2b(data, digest_size=MAC_SIZE, key=key)


MACS = cookie.MacSuite("blake2b", lambda data: crypto.blake2b(data, digest_size=KEY_SIZE), mac,
                       LABEL_MAC1, LABEL_COOKIE)
mac1_key = MACS.mac1_key        # BLAKE2b-256(LABEL_MAC1 || static_public)
cookie_key = MACS.cookie_key    # BLAKE2b-256(LABEL_COOKIE || static_public)


class CookieChecker(cookie.CookieChecker):
    macs = MACS


class CookieGenerator(cookie.CookieGenerator):
    macs = MACS
