"""The one HKDF of both handshakes: Noise's HKDF (Noise spec section 4.3),
which WireGuard's whitepaper calls KDFn (section 5.4)::

    temp = HMAC(chaining_key, input_key_material)
    out1 = HMAC(temp, 0x01)
    out2 = HMAC(temp, out1 || 0x02)
    out3 = HMAC(temp, out2 || 0x03)

That is RFC 5869's HKDF with salt = chaining_key, empty info and
``outputs`` times the hash length (tests/unit/protocols/test_kdf.py checks
it against the ``cryptography`` package's HKDF).  The HMAC is the
protocol's: HMAC-BLAKE2b for Phantom (:func:`phantom.crypto.hmac_blake2b`),
HMAC-BLAKE2s for WireGuard (:func:`phantom.protocols.wireguard.symmetric.HMAC`).
"""

from __future__ import annotations

from typing import Callable

Hmac = Callable[[bytes, bytes], bytes]


def hkdf(hmac: Hmac, chaining_key, input_key_material, outputs: int) -> list[bytes]:
    """``outputs`` (1 to 3 in the protocols) keys of the HMAC's length."""
    if not 1 <= outputs <= 255:
        raise ValueError("HKDF gives 1 to 255 outputs")
    temp = hmac(bytes(chaining_key), bytes(input_key_material))
    out, prev = [], b""
    for i in range(1, outputs + 1):
        prev = hmac(temp, prev + bytes([i]))
        out.append(prev)
    return out
