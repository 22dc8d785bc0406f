"""What the contract tests build alike, in one place: keypairs, the spec's
AEGIS-256 datagrams (libsodium directly), what a data path puts on the wire
for keepalives and app packets, and what it does with raw datagrams fed to it.

Used by test_ciphers.py, test_wg_datapath.py, test_fastpath.py and
test_relay_frames.py (which used to carry a copy each, or import another test
module's).
"""

from __future__ import annotations

import asyncio
import socket
import time

from phantom import crypto, wire
from phantom.dataplane import ciphers
from phantom.dataplane.ciphers import CipherKind
from phantom.dataplane.types import Keypair

KEY_A = bytes(range(32))
KEY_B = bytes(range(50, 82))


def keypair(peer, idx, ridx, send, recv, cipher=CipherKind.SECRETBOX, initiator=True,
            created=None) -> Keypair:
    """One keypair at ``peer``: packets to us carry ``idx``, ours to it ``ridx``."""
    created = time.monotonic() if created is None else created
    return Keypair(peer, idx, ridx, bytearray(send), bytearray(recv), created, initiator, int(cipher))


def keypairs(peer_a=1, peer_b=2, idx_a=0x1111, idx_b=0x2222, cipher=CipherKind.SECRETBOX,
             ka=KEY_A, kb=KEY_B):
    """Matching keypairs (a, b): a, the initiator, sends with ``ka``; b with ``kb``."""
    now = time.monotonic()
    return (keypair(peer_a, idx_a, idx_b, ka, kb, cipher, True, now),
            keypair(peer_b, idx_b, idx_a, kb, ka, cipher, False, now))


def derived(key) -> bytes:
    """The AEGIS-256 transport key a session key gives (ciphers.transport_keys)."""
    return bytes(ciphers.transport_keys(CipherKind.AEGIS256, bytearray(key), bytearray(key))[0])


def aegis_seal_spec(key, counter, plaintext, ad=b"") -> bytes:
    """AEGIS-256 ciphertext || tag as docs/protocol.md defines it, from
    libsodium directly: ``key``'s derived key, the counter u64 little-endian
    and 24 zero bytes as nonce, ``ad`` as associated data."""
    clen = crypto.ffi.new("unsigned long long *")
    out = crypto.ffi.new("unsigned char[]", len(plaintext) + 32)
    assert crypto.lib.crypto_aead_aegis256_encrypt(
        out, clen, plaintext, len(plaintext), ad or crypto.ffi.NULL, len(ad), crypto.ffi.NULL,
        counter.to_bytes(8, "little") + bytes(24), derived(key)) == 0
    return bytes(crypto.ffi.buffer(out, clen[0]))


def aegis_spec(key, index, counter, plaintext) -> bytes:
    """The AEGIS-256 transport datagram (no associated data) the spec defines."""
    return wire.pack_transport_header(index, counter) + aegis_seal_spec(key, counter, plaintext)


async def sent(node, sink, peer, payloads, keepalives=0) -> list:
    """What ``node`` puts on the wire to ``sink`` (``peer``'s endpoint) for
    ``keepalives`` keepalives to ``peer``, then each of ``payloads`` from its app."""
    out = []
    for _ in range(keepalives):
        node.dp.send_keepalive(peer)
        out.append(await asyncio.to_thread(lambda: sink.recvfrom(70000)[0]))
    for p in payloads:
        node.send_app(p)
        out.append(await asyncio.to_thread(lambda: sink.recvfrom(70000)[0]))
    return out


async def captured(node, keypair, payloads, keepalives=0) -> list:
    """What a test-mode ``node`` (closed here) puts on the wire once started
    with one peer, 1, at a sink socket, holding ``keypair`` (confirmed): see
    :func:`sent`."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(2.0)
        node.dp.add_peer(1, [])
        node.dp.set_test_peer(1)
        node.dp.set_endpoint(1, sink.getsockname())
        node.dp.start()
        node.dp.install_keypair(keypair, confirmed=True)
        return await sent(node, sink, 1, payloads, keepalives)
    finally:
        node.close()
        sink.close()


async def fed(node, src, to, datagrams, gap=0.01, settle=0.3):
    """Send raw ``datagrams`` from socket ``src`` to ``to`` (the node's UDP
    address), ``gap`` seconds apart; ``settle`` seconds later: (the node's
    non-zero global drops, the packets its app got)."""
    for d in datagrams:
        src.sendto(d, to)
        if gap:
            await asyncio.sleep(gap)
    await asyncio.sleep(settle)
    delivered = []
    node.app.setblocking(False)
    while True:
        try:
            delivered.append(node.app.recv(70000))
        except BlockingIOError:
            break
    return {k: v for k, v in node.dp.global_drops().items() if v}, delivered
