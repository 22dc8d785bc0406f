"""Transport ciphers: what a keypair seals and opens packets with, in place.

A keypair carries its cipher (:class:`phantom.dataplane.types.Keypair.cipher`);
the reference path calls the two functions of that cipher and the fast path
the C functions of the same kind (``phantom/fastpath/ciphers.pxi``), byte for
byte the same (tests/contract/test_ciphers.py).

The ciphers work on the data path's buffers, where an outbound plaintext of
``n`` bytes sits at ``PAYLOAD_OFFSET`` (32) and an inbound datagram at 0:

``secretbox`` (Phantom's baseline suite, :mod:`phantom.wire.phantom`)
    out: header at 0, MAC at 16, ciphertext at 32; the datagram is buf[0:32+n].
    in:  plaintext at 32..len.

``aegis256`` (Phantom's suite where both ends have AES hardware)
    out: header at 16, AEGIS-256 (32-byte nonce from the counter, no AD) in
    place at 32, the 32-byte tag right after; the datagram is buf[16:64+n].
    in:  ciphertext at 16..len-32, tag at len-32; plaintext at 16..len-32.
    Its key is not the session key itself but one derived from it
    (:func:`transport_keys`): the session key also seals peer-control and
    relay frames with secretbox, and one key never serves two primitives.

``chacha20poly1305`` (WireGuard, :mod:`phantom.wire.wireguard`)
    out: plaintext zero-padded to a multiple of 16 (never past the MTU),
    header at 16, ChaCha20-Poly1305 (IETF nonce from the counter, no AD)
    in place at 32, tag right after; the datagram is buf[16:48+padded].
    in:  ciphertext at 16..len-16, tag at len-16; plaintext at 16..len-16
    (still padded: the caller trims it to the inner packet's own length).
    libsodium's or OpenSSL's implementation (:func:`chacha_policy`): the same
    bytes either way.

libsodium (and OpenSSL) allow ciphertext and plaintext to be the same buffer,
so nothing is copied.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from typing import Optional

from .. import crypto, libcrypto
from ..wire import phantom as phw
from ..wire import wireguard as wgw
from ..wire.ciphers import SUITE_CIPHER, CipherKind  # noqa: F401  (declared below both planes)

log = logging.getLogger("phantom.data")

ffi, lib = crypto.ffi, crypto.lib

PAYLOAD_OFFSET = phw.TRANSPORT_PAYLOAD_OFFSET      # 32: where outbound plaintext is read to
HEADER_SIZE = phw.TRANSPORT_HEADER_SIZE            # 16, the same for both protocols
TAG = 16
_HEADER = struct.Struct("<B3xIQ")
_TRANSPORT = phw.MessageType.TRANSPORT


PHANTOM_CIPHERS = frozenset(SUITE_CIPHER.values())
CIPHER_NAMES = {CipherKind.SECRETBOX: "secretbox", CipherKind.AEGIS256: "aegis256",
                CipherKind.CHACHA20POLY1305: "chacha20poly1305"}
AEGIS_EXTRA = phw.AEGIS256_EXTRA        # 16: its tag is 32 bytes, secretbox's MAC 16
# crypto_kdf context of the derived transport keys (8 bytes); the subkey id is the suite
KDF_CONTEXT = b"phtransp"


def transport_keys(kind, send_key, recv_key) -> tuple:
    """The keys a keypair's transport data is sealed with: the session keys
    themselves, except for aegis256, whose keys are derived from them with
    crypto_kdf (subkey id = the suite's number, context ``phtransp``).  New
    bytearrays for aegis256 (the caller zeroes them), the same objects else."""
    if CipherKind(kind) is CipherKind.AEGIS256:
        sid = int(phw.Suite.AEGIS256)
        return (crypto.kdf_derive(send_key, sid, KDF_CONTEXT),
                crypto.kdf_derive(recv_key, sid, KDF_CONTEXT))
    return send_key, recv_key


# --- which ChaCha20-Poly1305 ------------------------------------------------------------
CHACHA_ENV = "PHANTOM_CHACHA"
CHACHA_CHOICES = ("auto", "libsodium", "openssl")
# Used when libcrypto is there but nothing measures (the fast path's extension
# is not built): OpenSSL from 768-byte packets on, libsodium below -- the
# crossover bench/bench_crypto.py finds on the development machine (docs/benchmarks.md).
CHACHA_RULE_OPENSSL_FROM = 768
CHACHA_PROBE_SIZES = (64, 128, 256, 384, 512, 768, 1024, 1420, 4096)


@dataclass(frozen=True)
class ChachaPolicy:
    """Which implementation seals and opens WireGuard packets.

    Packets whose (padded) plaintext has at least ``openssl_from`` bytes go to
    OpenSSL's libcrypto, the rest to libsodium; None: libsodium only."""

    openssl_from: Optional[int]
    decided_by: str                       # "measurement", "rule", "PHANTOM_CHACHA=...", "libcrypto absent"
    libcrypto: Optional[str] = None       # OpenSSL's version string
    measured: dict = field(default_factory=dict)   # size -> {"libsodium": ns, "openssl": ns} (seal+open)

    @property
    def implementation(self) -> str:
        if self.openssl_from is None:
            return "libsodium"
        if self.openssl_from == 0:
            return "openssl"
        return "openssl from %d bytes, libsodium below" % self.openssl_from

    def describe(self) -> dict:
        return {"implementation": self.implementation, "openssl_from_bytes": self.openssl_from,
                "decided_by": self.decided_by, "libcrypto": self.libcrypto,
                "measured_ns": {str(k): v for k, v in self.measured.items()}}


_policy: Optional[ChachaPolicy] = None
_openssl_from: Optional[int] = None       # what seal_chacha/open_chacha use (the policy's)


def _measure() -> Optional[dict]:
    """seal+open ns per packet of each size for both implementations, in C
    (the fast path's extension), the best of three interleaved rounds; None
    when the extension is not built."""
    try:
        from ..fastpath import _engine as _fp
    except ImportError:
        return None
    if not _fp.chacha_openssl_ready():
        return None
    best: dict = {}
    for _ in range(3):
        for size in CHACHA_PROBE_SIZES:
            n = max(20, 200000 // (size + 256))
            for impl in ("libsodium", "openssl"):
                ns = _fp.time_chacha(impl, size, n) / n * 1e9
                cur = best.setdefault(size, {})
                cur[impl] = round(min(cur.get(impl, ns), ns), 1)
    return best


def chacha_crossover(measured: dict) -> Optional[int]:
    """The smallest probed size from which OpenSSL is faster at every larger
    probed size too; None when it is slower at the largest."""
    sizes = sorted(measured)
    start = None
    for size in reversed(sizes):
        m = measured[size]
        if m["openssl"] < m["libsodium"]:
            start = size
        else:
            break
    if start == sizes[0]:
        return 0
    return start


def decide_chacha(env: Optional[str] = None) -> ChachaPolicy:
    """The policy for this process: ``PHANTOM_CHACHA`` (auto, libsodium,
    openssl) if set, else a measurement of both at start-up, else the rule."""
    choice = (env if env is not None else os.environ.get(CHACHA_ENV, "auto")).strip().lower() or "auto"
    if choice not in CHACHA_CHOICES:
        log.warning("%s=%r is not one of %s: using auto", CHACHA_ENV, choice, ", ".join(CHACHA_CHOICES))
        choice = "auto"
    ver = libcrypto.version()
    if not libcrypto.available():
        return ChachaPolicy(None, "libcrypto absent" if choice != "libsodium" else "%s=libsodium" % CHACHA_ENV)
    if choice == "libsodium":
        return ChachaPolicy(None, "%s=libsodium" % CHACHA_ENV, ver)
    if choice == "openssl":
        return ChachaPolicy(0, "%s=openssl" % CHACHA_ENV, ver)
    measured = _measure()
    if measured is None:
        return ChachaPolicy(CHACHA_RULE_OPENSSL_FROM, "rule", ver)
    return ChachaPolicy(chacha_crossover(measured), "measurement", ver, measured)


def chacha_policy() -> ChachaPolicy:
    """The policy in force, decided at the first call (the daemon calls this at start)."""
    global _policy
    if _policy is None:
        set_chacha_policy(decide_chacha())
    return _policy


def set_chacha_policy(policy: ChachaPolicy) -> None:
    """Install ``policy`` for this process (both data paths; tests force one)."""
    global _policy, _openssl_from
    if policy.openssl_from is not None and not libcrypto.available():
        raise ValueError("libcrypto is not available")
    _policy = policy
    _openssl_from = policy.openssl_from
    try:
        from ..fastpath import _engine as _fp
    except ImportError:
        return
    _fp.set_chacha_openssl_from(-1 if policy.openssl_from is None else policy.openssl_from)


def seal_secretbox(key, counter: int, remote_index: int, buf: bytearray, n: int, mtu: int) -> tuple[int, int]:
    """Seal buf[32:32+n] in Phantom's format; (start, end) of the datagram in buf."""
    _HEADER.pack_into(buf, 0, _TRANSPORT, remote_index, counter)
    crypto.secretbox_seal_into(key, counter, buf, PAYLOAD_OFFSET, n)
    return 0, PAYLOAD_OFFSET + n


def open_secretbox(key, counter: int, buf: bytearray, n: int):
    """Open a Phantom datagram buf[0:n] in place; (payload start, length) or None."""
    if n < phw.TRANSPORT_MIN_SIZE:
        return None
    if not crypto.secretbox_open_into(key, counter, buf, HEADER_SIZE, n - HEADER_SIZE):
        return None
    return PAYLOAD_OFFSET, n - PAYLOAD_OFFSET


def seal_aegis(key, counter: int, remote_index: int, buf: bytearray, n: int, mtu: int) -> tuple[int, int]:
    """Seal buf[32:32+n] with AEGIS-256; (start, end) of the datagram in buf."""
    start = PAYLOAD_OFFSET - HEADER_SIZE
    _HEADER.pack_into(buf, start, _TRANSPORT, remote_index, counter)
    crypto.aegis256_seal_into(key, counter, buf, PAYLOAD_OFFSET, n)
    return start, PAYLOAD_OFFSET + n + crypto.AEGIS256_TAG


def open_aegis(key, counter: int, buf: bytearray, n: int):
    """Open an AEGIS-256 datagram buf[0:n] in place; (payload start, length) or None."""
    if n < phw.AEGIS256_OVERHEAD:
        return None
    if not crypto.aegis256_open_into(key, counter, buf, HEADER_SIZE, n - HEADER_SIZE):
        return None
    return HEADER_SIZE, n - phw.AEGIS256_OVERHEAD


def seal_chacha(key, counter: int, remote_index: int, buf: bytearray, n: int, mtu: int) -> tuple[int, int]:
    """Seal buf[32:32+n] in WireGuard's format; (start, end) of the datagram in buf."""
    padded = wgw.padded_length(n, mtu)
    if padded != n:
        buf[PAYLOAD_OFFSET + n:PAYLOAD_OFFSET + padded] = bytes(padded - n)
    start = PAYLOAD_OFFSET - HEADER_SIZE
    _HEADER.pack_into(buf, start, _TRANSPORT, remote_index, counter)
    if _openssl_from is not None and padded >= _openssl_from:
        libcrypto.seal_into(key, wgw.transport_nonce(counter), buf, PAYLOAD_OFFSET, padded)
        return start, PAYLOAD_OFFSET + padded + TAG
    p = ffi.from_buffer(buf)
    clen = ffi.new("unsigned long long *")
    rc = lib.crypto_aead_chacha20poly1305_ietf_encrypt(
        p + PAYLOAD_OFFSET, clen, p + PAYLOAD_OFFSET, padded, ffi.NULL, 0, ffi.NULL,
        wgw.transport_nonce(counter), ffi.from_buffer(key))
    if rc != 0:
        raise crypto.CryptoError("chacha20poly1305 seal failed")
    return start, PAYLOAD_OFFSET + padded + TAG


def open_chacha(key, counter: int, buf: bytearray, n: int):
    """Open a WireGuard datagram buf[0:n] in place; (payload start, padded length) or None."""
    if n < wgw.TRANSPORT_MIN_SIZE:
        return None
    if _openssl_from is not None and n - HEADER_SIZE - TAG >= _openssl_from:
        if not libcrypto.open_into(key, wgw.transport_nonce(counter), buf, HEADER_SIZE, n - HEADER_SIZE):
            return None
        return HEADER_SIZE, n - HEADER_SIZE - TAG
    p = ffi.from_buffer(buf)
    mlen = ffi.new("unsigned long long *")
    rc = lib.crypto_aead_chacha20poly1305_ietf_decrypt(
        p + HEADER_SIZE, mlen, ffi.NULL, p + HEADER_SIZE, n - HEADER_SIZE, ffi.NULL, 0,
        wgw.transport_nonce(counter), ffi.from_buffer(key))
    if rc != 0:
        return None
    return HEADER_SIZE, n - HEADER_SIZE - TAG


SEAL = {CipherKind.SECRETBOX: seal_secretbox, CipherKind.CHACHA20POLY1305: seal_chacha,
        CipherKind.AEGIS256: seal_aegis}
OPEN = {CipherKind.SECRETBOX: open_secretbox, CipherKind.CHACHA20POLY1305: open_chacha,
        CipherKind.AEGIS256: open_aegis}
# bytes a sealed datagram adds to its plaintext (WireGuard's padding aside)
OVERHEAD = {CipherKind.SECRETBOX: phw.TRANSPORT_OVERHEAD, CipherKind.CHACHA20POLY1305: wgw.TRANSPORT_OVERHEAD,
            CipherKind.AEGIS256: phw.AEGIS256_OVERHEAD}


def seal_packet(kind: CipherKind, key, remote_index: int, counter: int, plaintext: bytes,
                mtu: int = 0) -> bytes:
    """A whole transport datagram for ``plaintext`` (tests, tools): not the data path."""
    n = len(plaintext)
    buf = bytearray(PAYLOAD_OFFSET + n + 2 * TAG + 16)
    buf[PAYLOAD_OFFSET:PAYLOAD_OFFSET + n] = plaintext
    start, end = SEAL[CipherKind(kind)](key, counter, remote_index, buf, n, mtu)
    return bytes(buf[start:end])


def open_packet(kind: CipherKind, key, datagram: bytes):
    """(receiver index, counter, plaintext) of a transport datagram, or None if forged."""
    if len(datagram) < HEADER_SIZE:
        return None
    _, index, counter = _HEADER.unpack_from(datagram, 0)
    buf = bytearray(datagram)
    got = OPEN[CipherKind(kind)](key, counter, buf, len(buf))
    if got is None:
        return None
    start, length = got
    return index, counter, bytes(buf[start:start + length])


def inner_length(packet) -> int:
    """The length an IPv4/IPv6 packet says it has (0 when it is neither or too short).

    WireGuard pads transport payloads; the receiver trims them back to this.
    """
    if len(packet) < 1:
        return 0
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return (packet[2] << 8) | packet[3]
    if version == 6 and len(packet) >= 40:
        return 40 + ((packet[4] << 8) | packet[5])
    return 0
