"""The fast path's ones' complement sum (TSO/USO segment checksums), summed
eight bytes a step in native order since issue #15, equals RFC 1071's
big-endian 16-bit sum for every length and alignment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

_testing = pytest.importorskip("phantom.fastpath._testing", reason="phantom.fastpath._testing is not built")


def _rfc1071(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum((b[i] << 8) | b[i + 1] for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@given(st.binary(max_size=3000), st.integers(0, 7))
def test_sum_matches_rfc1071(data, offset):
    offset = min(offset, len(data))
    assert _testing.inet_sum(data, offset) == _rfc1071(data[offset:])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 1400, 65535])
def test_all_ones_and_edges(n):
    for fill in (b"\xff", b"\x00", b"\x80"):
        d = fill * n
        assert _testing.inet_sum(d) == _rfc1071(d)
