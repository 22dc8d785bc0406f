"""WireGuard's symmetric functions (whitepaper section 5.4), over BLAKE2s.

    HASH(input)             BLAKE2s(input, 32)
    MAC(key, input)         Keyed-BLAKE2s(key, input, 16)
    HMAC(key, input)        HMAC-BLAKE2s(key, input, 32)   (RFC 2104, block 64)
    KDFn(key, input)        HKDF over HMAC: t0 = HMAC(key, input),
                            t1 = HMAC(t0, 0x1), ti = HMAC(t0, t(i-1) || i)
                            (the HKDF both protocols use, :mod:`phantom.protocols.kdf`)

BLAKE2s is Python's :mod:`hashlib` (the reference implementation CPython
bundles); HMAC is :mod:`hmac` over it.  Nothing here is a new primitive.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac

from ..kdf import hkdf

HASH_SIZE = 32
MAC_SIZE = 16

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"


def HASH(*parts) -> bytes:  # noqa: N802  (the whitepaper's names)
    h = hashlib.blake2s(digest_size=HASH_SIZE)
    for p in parts:
        h.update(bytes(p))
    return h.digest()


def MAC(key, data) -> bytes:  # noqa: N802
    return hashlib.blake2s(bytes(data), digest_size=MAC_SIZE, key=bytes(key)).digest()


def HMAC(key, data) -> bytes:  # noqa: N802
    return _hmac.new(bytes(key), bytes(data), hashlib.blake2s).digest()


def KDF(n: int, key, data) -> list[bytes]:  # noqa: N802
    """KDF1/KDF2/KDF3 of the whitepaper: ``n`` 32-byte outputs."""
    return hkdf(HMAC, key, data, n)


def KDF1(key, data) -> bytes:  # noqa: N802
    return KDF(1, key, data)[0]


def KDF2(key, data) -> tuple[bytes, bytes]:  # noqa: N802
    a, b = KDF(2, key, data)
    return a, b


def KDF3(key, data) -> tuple[bytes, bytes, bytes]:  # noqa: N802
    a, b, c = KDF(3, key, data)
    return a, b, c


# Ci = HASH(CONSTRUCTION); Hi = HASH(Ci || IDENTIFIER): the same for every handshake.
INITIAL_CHAIN_KEY = HASH(CONSTRUCTION)
INITIAL_HASH = HASH(INITIAL_CHAIN_KEY, IDENTIFIER)
