"""Relay frames on both data paths, byte for byte (issue 23 item 4).

A hop whose session negotiated aegis256 carries relay frames as wire type 7
(AEGIS-256 under the hop's transport key, the 16-byte header as associated
data); a secretbox hop as type 6.  A relay forwards as type 7 only a frame
that came as type 7, to a destination whose session is aegis256.  Checked:

* a relayed sender's frames are byte-identical on both paths and to the
  spec (libsodium directly), for either hop suite; handshake messages the
  control plane sends through the relay are type 6 on either;
* every combination of hop suites, on every pair of data paths, carries
  traffic both ways with the frame type on each hop as above (seen on the
  wire by a UDP proxy on each hop), and nothing is dropped;
* forged, relabelled (type 4 <-> 7, 7 -> 6), replayed and truncated hop
  frames, and type 7 on a secretbox hop, are counted drops decided alike by
  both paths; a type-6 frame on an aegis256 hop (an older sender) is still
  delivered;
* (fast path, which has TUN offloads) a TSO super-packet for a relayed peer
  is cut so that no relay frame is bigger than a direct full-MTU datagram.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

import pytest

from phantom import crypto, wire
from phantom.dataplane import ciphers
from phantom.dataplane.ciphers import CipherKind
from phantom.dataplane.types import RelayVia
from tests.contract.conftest import aegis_seal_spec, aegis_spec, derived, fed, keypair, sent
from tests.contract.test_ciphers import PAIRS, Node, _udp, run, until

pytest.importorskip("phantom.fastpath._testing", reason="phantom.fastpath._testing is not built")

pytestmark = pytest.mark.timeout(120)

AEGIS = CipherKind.AEGIS256
SECRETBOX = CipherKind.SECRETBOX
HOP_KEY_SEND, HOP_KEY_RECV = bytes(range(100, 132)), bytes(range(140, 172))
E2E_KEY_SEND, E2E_KEY_RECV = bytes(range(200, 232)), bytes(range(10, 42))
RID = 0x6B1D3A27
HOP_IDX, HOP_RIDX = 0x1111, 0x2222          # our index at the relay's end, the relay's
E2E_IDX, E2E_RIDX = 0x3333, 0x4444
HEADER = struct.Struct("<B3xIQ")


def frame_spec(hop, counter, inner) -> bytes:
    """A relay frame from a relayed sender to its relay, as docs/protocol.md
    defines it, from libsodium directly."""
    plain = RID.to_bytes(4, "little") + inner
    if hop is SECRETBOX:
        return HEADER.pack(6, HOP_RIDX, counter) + crypto.secretbox_seal(HOP_KEY_SEND, counter, plain)
    head = HEADER.pack(7, HOP_RIDX, counter)
    return head + aegis_seal_spec(HOP_KEY_SEND, counter, plain, ad=head)


PAYLOADS = [b"a->b", bytes(range(256)), os.urandom(1420 - 52 - 16), os.urandom(1)]
INITIATION = bytes([wire.MessageType.INITIATION, 0, 0, 0]) + os.urandom(wire.INITIATION_SIZE - 4)


def _capture_frames(impl, hop):
    """What a relayed sender (peer 1: its relay, at a sink; peer 2: the far
    end, through the relay) sends for a keepalive and PAYLOADS."""
    async def main():
        node = Node(impl)
        sink = _udp(2.0)
        try:
            node.dp.add_peer(1, [])
            node.dp.add_peer(2, [])
            node.dp.set_endpoint(1, sink.getsockname())
            node.dp.install_keypair(keypair(1, HOP_IDX, HOP_RIDX, HOP_KEY_SEND, HOP_KEY_RECV, hop), True)
            node.dp.install_keypair(keypair(2, E2E_IDX, E2E_RIDX, E2E_KEY_SEND, E2E_KEY_RECV, AEGIS), True)
            node.dp.set_endpoint(2, RelayVia(1, RID))
            node.dp.set_relay_route(2, 1, RID)
            node.dp.set_test_peer(2)
            node.dp.start()
            out = await sent(node, sink, 2, PAYLOADS, keepalives=1)
            node.dp.send_control(INITIATION, RelayVia(1, RID))     # the control plane's, through the relay
            out.append(await asyncio.to_thread(lambda: sink.recvfrom(70000)[0]))
            return out
        finally:
            node.close()
            sink.close()
    return run(main())


@pytest.mark.parametrize("hop", [AEGIS, SECRETBOX], ids=["aegis256-hop", "secretbox-hop"])
def test_relay_frames_byte_identical_on_both_paths_and_to_the_spec(hop):
    ref = _capture_frames("reference", hop)
    mine = _capture_frames("fast", hop)
    assert mine == ref
    for i, (p, frame) in enumerate(zip([b""] + PAYLOADS, mine)):
        inner = aegis_spec(E2E_KEY_SEND, E2E_RIDX, i, p)
        assert frame == frame_spec(hop, i, inner)
        assert frame[0] == (7 if hop is AEGIS else 6)
        assert len(frame) == len(inner) + (52 if hop is AEGIS else 36)
    # a handshake message through the relay is type 6 on either hop (the
    # largest initiation, 1,192 bytes, + 36 + 48 fits IPv6's minimum MTU)
    n = len(PAYLOADS) + 1
    assert mine[n] == frame_spec(SECRETBOX, n, INITIATION) and len(mine) == n + 1


# ---------------------------------------------------------------- every hop suite, every path
class Proxy:
    """A UDP hop between ``left`` and ``right`` (addresses): what comes from
    right goes to left, anything else to right; records the first byte of
    each datagram and its direction."""

    def __init__(self, left, right):
        self.left, self.right = left, right
        self.sock = _udp(0.05)
        self.seen: list = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def addr(self):
        return self.sock.getsockname()

    def _run(self):
        while not self._stop:
            try:
                data, src = self.sock.recvfrom(70000)
            except (socket.timeout, OSError):
                continue
            to_left = src == self.right
            self.seen.append(("<" if to_left else ">", data[0]))
            try:
                self.sock.sendto(data, self.left if to_left else self.right)
            except OSError:
                pass

    def close(self):
        self._stop = True
        self._t.join(2)
        self.sock.close()


@pytest.mark.parametrize("relay_impl,end_impl", PAIRS)
@pytest.mark.parametrize("hop_a,hop_b", [(AEGIS, AEGIS), (AEGIS, SECRETBOX), (SECRETBOX, AEGIS)],
                         ids=["aegis-aegis", "aegis-sb", "sb-aegis"])
def test_relay_hops_of_any_suites_on_every_pair_of_data_paths(relay_impl, end_impl, hop_a, hop_b):
    async def main():
        a, r, b = Node(end_impl), Node(relay_impl), Node(end_impl)
        pa = Proxy(a.addr(), r.addr())          # a <-> r
        pb = Proxy(b.addr(), r.addr())          # b <-> r
        try:
            for n in (a, r, b):
                n.dp.add_peer(1, [])
                n.dp.add_peer(2, [])
            for x, xp, y, yp, cipher in ((a, 1, r, 1, hop_a), (b, 1, r, 2, hop_b), (a, 2, b, 2, AEGIS)):
                k1, k2 = crypto.random_bytes(32), crypto.random_bytes(32)
                ix, iy = 500 + 10 * xp + yp + (0 if x is a else 100), 900 + 10 * xp + yp + (0 if x is a else 100)
                x.dp.install_keypair(keypair(xp, ix, iy, k1, k2, cipher), True)
                y.dp.install_keypair(keypair(yp, iy, ix, k2, k1, cipher, False), True)
            a.dp.set_endpoint(1, pa.addr())
            b.dp.set_endpoint(1, pb.addr())
            r.dp.set_endpoint(1, pa.addr())
            r.dp.set_endpoint(2, pb.addr())
            r.dp.set_relay(True)
            r.dp.set_relay_pair(1, RID, 2)
            r.dp.set_relay_pair(2, RID, 1)
            for n in (a, b):
                n.dp.set_endpoint(2, RelayVia(1, RID))
                n.dp.set_relay_route(2, 1, RID)
                n.dp.set_test_peer(2)
            for n in (a, r, b):
                n.dp.start()
            big = os.urandom(1420)
            for p in (b"a->b", big, bytes(range(200))):
                a.send_app(p)
                assert await asyncio.to_thread(b.recv_app) == p
                b.send_app(p[::-1])
                assert await asyncio.to_thread(a.recv_app) == p[::-1]
            await until(lambda: len(pa.seen) == 6 and len(pb.seen) == 6)
            t = lambda hop: 7 if hop is AEGIS else 6           # noqa: E731
            # a -> r: a's hop; r -> b: type 7 only if it came as 7 and b's hop is aegis256
            assert pa.seen.count((">", t(hop_a))) == 3
            assert pb.seen.count(("<", 7 if hop_a is AEGIS and hop_b is AEGIS else 6)) == 3
            assert pb.seen.count((">", t(hop_b))) == 3
            assert pa.seen.count(("<", 7 if hop_a is AEGIS and hop_b is AEGIS else 6)) == 3
            assert r.dp.relayed["forwarded"] == 6
            for n in (a, r, b):
                assert not any(n.dp.global_drops().values()), n.dp.global_drops()
        finally:
            pa.close()
            pb.close()
            for n in (a, r, b):
                n.close()
    run(main())


# ------------------------------------------------------------- hostile hop frames, both paths
async def _feed_relayed(impl, datagrams):
    """Raw datagrams to a relayed peer whose relay is peer 1 (aegis256 hop)
    and peer 3 (a secretbox hop, the same relay id), the far end peer 2:
    (drops, delivered)."""
    node = Node(impl)
    src = _udp()
    try:
        for p in (1, 2, 3):
            node.dp.add_peer(p, [])
        node.dp.install_keypair(keypair(1, HOP_RIDX, HOP_IDX, HOP_KEY_RECV, HOP_KEY_SEND, AEGIS, False), True)
        node.dp.install_keypair(keypair(3, 0x5555, 0x6666, HOP_KEY_RECV, HOP_KEY_SEND, SECRETBOX, False), True)
        node.dp.install_keypair(keypair(2, E2E_RIDX, E2E_IDX, E2E_KEY_RECV, E2E_KEY_SEND, AEGIS, False), True)
        node.dp.set_endpoint(1, src.getsockname())
        node.dp.set_endpoint(3, src.getsockname())
        node.dp.set_endpoint(2, RelayVia(1, RID))
        node.dp.set_relay_route(2, 1, RID)
        node.dp.set_test_peer(2)
        node.dp.start()
        return await fed(node, src, node.addr(), datagrams)
    finally:
        node.close()
        src.close()


def test_forged_relabelled_and_replayed_hop_frames_are_counted_drops_alike():
    inner = lambda ctr, p: aegis_spec(E2E_KEY_SEND, E2E_RIDX, ctr, p)   # noqa: E731
    frame = lambda ctr, p, hop=AEGIS: frame_spec(hop, ctr, inner(ctr, p))  # noqa: E731
    forged = bytearray(frame(2, b"forged"))
    forged[-1] ^= 1
    as4 = bytearray(frame(3, b"as type 4"))
    as4[0] = wire.MessageType.TRANSPORT
    as6 = bytearray(frame(4, b"as type 6"))
    as6[0] = wire.MessageType.RELAY
    # a type-4 datagram of the hop session whose payload is relay_id | inner, called type 7
    hop4 = bytearray(ciphers.seal_packet(AEGIS, derived(HOP_KEY_SEND), HOP_RIDX, 5,
                                         RID.to_bytes(4, "little") + inner(5, b"hop4")))
    hop4[0] = 7                                 # wire.MessageType.RELAY_AEGIS
    # type 7 on the secretbox hop (peer 3's index): malformed whatever its bytes
    on_sb = bytearray(frame(6, b"on a secretbox hop"))
    on_sb[4:8] = (0x5555).to_bytes(4, "little")
    short = frame(7, b"short")[:47]
    datagrams = [frame(0, b"good"), frame(0, b"good"),           # replay
                 bytes(forged), bytes(as4), bytes(as6), bytes(hop4), bytes(on_sb), short,
                 frame(8, b"type 6, an older sender", SECRETBOX),   # still taken on an aegis256 hop
                 frame(9, b"last")]
    ref = run(_feed_relayed("reference", datagrams))
    mine = run(_feed_relayed("fast", datagrams))
    assert ref == mine
    drops, delivered = ref
    assert drops == {"replay": 1, "auth_failed": 5, "malformed": 1}
    assert delivered == [b"good", b"type 6, an older sender", b"last"]


# ------------------------------------------------- fast path: TSO segments for a relayed peer
@pytest.mark.parametrize("hop,e2e", [(AEGIS, AEGIS), (SECRETBOX, SECRETBOX), (SECRETBOX, AEGIS)],
                         ids=["aegis-aegis", "sb-sb", "sb-aegis"])
def test_tso_segments_for_a_relayed_peer_leave_room_for_the_relay_frame(hop, e2e):
    """A TCP super-packet (TSO, gso_size = the MSS of a 1,420 MTU) for a peer
    reached through a relay is cut so that every relay frame is no bigger
    than a direct datagram of a full-MTU packet (1,420 + 32): nothing needs
    IP fragments on a 1,500-byte underlay.  The segments still carry the
    whole payload, in order, with valid checksums."""
    from phantom.dataplane import fast
    from phantom.fastpath import _engine
    from tests.contract.test_fastpath import VNET, _ip4_tcp, _tcp_ok
    app, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev.setblocking(False)
    udp, relay = _udp(), _udp(2.0)
    engine = _engine.Forwarder(_engine.MODE_IDS["tun"], udp.fileno(), max_inner=1420)
    keys = {}
    for peer, idx, ridx, send, recv, cipher in ((1, HOP_IDX, HOP_RIDX, HOP_KEY_SEND, HOP_KEY_RECV, hop),
                                                (2, E2E_IDX, E2E_RIDX, E2E_KEY_SEND, E2E_KEY_RECV, e2e)):
        engine.add_peer(peer)
        dsend, drecv = ciphers.transport_keys(cipher, bytearray(send), bytearray(recv))
        keys[peer] = bytes(dsend)
        extra = dict(data_send_key=bytes(dsend), data_recv_key=bytes(drecv)) if cipher is AEGIS else {}
        engine.install_keypair(peer, idx, ridx, send, recv, time.monotonic(), True, int(cipher), **extra)
    engine.set_routes([(32, bytes([10, 2, 0, 0]), 16, 2)])
    engine.set_endpoint(1, fast.sockaddr_bytes(relay.getsockname()))
    engine.set_relay_route(2, 1, RID, True)
    worker = _engine.Worker(engine, udp.fileno(), dev.fileno(), False, burst=64, vnet=True, gso=True, gro=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        payload = os.urandom(20000)
        mss = 1380
        sup = bytearray(_ip4_tcp(payload, 5000, 0x18, dst=bytes([10, 2, 0, 9])))
        sup[36:38] = b"\0\0"                                 # partial checksum: pseudo-header sum
        app.send(VNET.pack(1, 1, 40, mss, 20, 16) + bytes(sup))
        segs, got = [], 0
        while got < len(payload):
            frame = relay.recvfrom(70000)[0]
            assert len(frame) <= 1420 + 32, len(frame)
            _, _, ctr = HEADER.unpack_from(frame)
            if hop is AEGIS:
                assert frame[0] == 7
                buf = bytearray(frame)
                assert crypto.aegis256_open_into(keys[1], ctr, buf, 16, len(buf) - 16, ad=frame[:16])
                plain = bytes(buf[16:-32])
            else:
                assert frame[0] == 6
                plain = crypto.secretbox_open(HOP_KEY_SEND, ctr, frame[16:])
            assert plain[:4] == RID.to_bytes(4, "little")
            opened = ciphers.open_packet(e2e, keys[2], plain[4:])
            assert opened is not None
            seg = opened[2]
            assert _tcp_ok(seg)
            segs.append(seg)
            got += len(seg) - 40
        assert b"".join(s[40:] for s in segs) == payload
        size = 1420 - (52 if hop is AEGIS else 36) - (16 if e2e is AEGIS else 0)
        assert [len(s) for s in segs[:-1]] == [size] * (len(segs) - 1)
        assert [struct.unpack_from("!I", s, 24)[0] for s in segs] == [5000 + i * (size - 40)
                                                                      for i in range(len(segs))]
    finally:
        worker.stop()
        thread.join(5)
        for s in (app, dev, udp, relay):
            s.close()
