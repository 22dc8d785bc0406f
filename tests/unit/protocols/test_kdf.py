"""The one HKDF (phantom/protocols/kdf.py) both handshakes use is RFC 5869's
HKDF (salt = the chaining key, empty info), checked against the independent
``cryptography`` package (what noiseprotocol, the interop tests' Noise
implementation, is built on), for Phantom's HMAC-BLAKE2b and WireGuard's
HMAC-BLAKE2s; and both protocols really derive through it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from phantom import crypto
from phantom.protocols import kdf
from phantom.protocols.phantom import noise
from phantom.protocols.wireguard import symmetric

SUITES = [(crypto.hmac_blake2b, hashes.BLAKE2b(64), 64), (symmetric.HMAC, hashes.BLAKE2s(32), 32)]


@pytest.mark.parametrize("hmac,algorithm,size", SUITES, ids=["blake2b", "blake2s"])
@given(ck=st.binary(min_size=1, max_size=64), ikm=st.binary(max_size=96), n=st.integers(1, 3))
def test_hkdf_is_rfc5869(hmac, algorithm, size, ck, ikm, n):
    ours = kdf.hkdf(hmac, ck, ikm, n)
    theirs = HKDF(algorithm=algorithm, length=n * size, salt=ck, info=b"").derive(ikm)
    assert b"".join(ours) == theirs and [len(x) for x in ours] == [size] * n


def test_both_protocols_derive_through_it(monkeypatch):
    calls = []
    real = kdf.hkdf

    def spy(hmac, ck, ikm, n):
        calls.append(hmac)
        return real(hmac, ck, ikm, n)

    monkeypatch.setattr(noise, "hkdf", spy)
    monkeypatch.setattr(symmetric, "hkdf", spy)
    noise.SymmetricState().mix_key(bytes(32))
    symmetric.KDF2(bytes(32), b"x")
    assert calls == [crypto.hmac_blake2b, symmetric.HMAC]


def test_hkdf_refuses_silly_counts():
    for n in (0, 256):
        with pytest.raises(ValueError):
            kdf.hkdf(crypto.hmac_blake2b, b"k", b"", n)
