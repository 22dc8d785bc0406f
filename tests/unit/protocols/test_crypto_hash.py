"""phantom.crypto's BLAKE2b and HMAC-BLAKE2b, called through cffi directly
(issue #15), give what PyNaCl's checked wrapper and RFC 2104 give."""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings as nb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phantom import crypto


@given(st.binary(max_size=300), st.binary(max_size=64), st.integers(1, 64))
def test_blake2b_matches_pynacl_and_hashlib(data, key, size):
    ours = crypto.blake2b(data, size, key)
    assert ours == nb.crypto_generichash_blake2b_salt_personal(data, digest_size=size, key=key)
    assert ours == hashlib.blake2b(data, digest_size=size, key=key).digest()


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_hmac_blake2b_is_rfc2104(key, data):
    assert crypto.hmac_blake2b(key, data) == hmac.new(key, data, hashlib.blake2b).digest()


def test_blake2b_bad_parameters_still_raise():
    with pytest.raises(Exception):
        crypto.blake2b(b"x", 65)
    with pytest.raises(Exception):
        crypto.blake2b(b"x", 32, bytes(65))
