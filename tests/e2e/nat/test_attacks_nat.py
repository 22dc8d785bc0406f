"""Attacks on NAT traversal, end to end (issue #18, items 3, 6 and 11): real
phantomd processes behind real iptables NAT routers (phantomlab.netns.Internet),
and a hostile member that is a real Phantom peer: a handshake with libsodium
through the project's own Engine in this process, over a UDP socket inside a
lab namespace, after which it seals whatever it likes with its session's
keys.  Each test asserts the property, not the mechanism:

* no accepted peer can make a node send more than a small bounded number of
  datagrams to an address that is not one of its real endpoints (counted at
  the victim's address);
* relay frames between peers that do not accept each other are not
  forwarded (counted at the target's interface), whatever relay id they
  carry;
* one key cannot hold more than a small bound of sessions on the rendezvous.
"""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from phantom import crypto, wire
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.keys import decode_public_key, load_private_key
from phantom.nat.traversal import PeerControlChannel
from phantomlab import netns
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import FAST_TUNABLES, UDP_PORT, peer_entry, write_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DATAPATHS = ["reference", "fast"]
UDP_CONNTRACK_TIMEOUT = 5
# What a member can make a node send to an address it merely claims: a
# registration carries at most 4 local endpoints, each tried at most 4 times
# (docs/nat.md, "Bounds"; rendezvous.MAX_LOCAL_ENDPOINTS, PathTable.probe_tries)
REFLECTION_BOUND = 4 * 4
# the rendezvous of the reflector test forgets a registration not renewed
# for this long (clients renew every 5 s; the default is 20 s)
REGISTRATION_TTL = 8.0
# the victim is watched this long past the 10 s mark after m left
QUIET = 3.0
# b's tries of one learnt endpoint end this long after it learnt it (four
# tries, 1, 2 and 4 rekey_timeout = 1 s apart); the last moment b can learn m's
# endpoints is the rendezvous forgetting m's registration
TRIES_SPAN = 1.0 + 2.0 + 4.0


@pytest.fixture(params=DATAPATHS)
def datapath(request):
    return request.param


def rv_entry(rv):
    e = peer_entry(rv, mode="tun", keepalive=1, allowed=[])
    e["rendezvous"] = True
    return e


def registered(node):
    wait_for(lambda: node.status()["nat"]["reflexive"], timeout=10, what="%s registered" % node.name)


class Hostile:
    """A member of the rendezvous that misbehaves: a genuine Phantom session
    with the rendezvous (its key is one the rendezvous serves), a UDP socket
    in ``host``'s namespace, frames sealed by hand with its own keys."""

    def __init__(self, host, node, rv):
        self.sock = host.ns.udp_socket(bind=("0.0.0.0", 0))
        self.sock.settimeout(0.5)
        self.engine = Engine(load_private_key(node.keyfile), Tunables())
        self.rv_addr = (rv.host.ip, UDP_PORT)
        self.rv = self.engine.add_peer(decode_public_key(rv.pub), "rv", endpoint=self.rv_addr)
        self.channel = PeerControlChannel()
        self.kp = None
        self.counter = 0
        self.responses = 0

    def close(self):
        self.sock.close()

    def do(self, actions):
        for act in actions:
            if isinstance(act, A.SendDatagram):
                self.sock.sendto(act.data, act.addr)
            elif isinstance(act, A.InstallKeypair):
                self.kp, self.counter = act.keypair, 0
                self.channel.install(act.keypair, act.confirmed)
            elif isinstance(act, A.SendKeepalive):
                self.sock.sendto(self.seal(wire.MessageType.TRANSPORT, b""), self.rv_addr)

    def receive(self, timeout=0.5):
        """One datagram: handshake answers are handled, peer control opened."""
        self.sock.settimeout(timeout)
        try:
            data, addr = self.sock.recvfrom(65535)
        except OSError:
            return None
        if data[:1] in (b"\x02", b"\x03"):
            if data[:1] == b"\x02":
                self.responses += 1
            self.do(self.engine.handle_datagram(data, addr))
        elif data[:1] == b"\x05":
            return self.channel.open(data)
        return None

    def handshake(self, timeout=10.0):
        self.do(self.engine.open(self.rv.id))
        deadline = time.monotonic() + timeout
        while self.rv.state.value != "established":
            assert time.monotonic() < deadline, "the hostile member got no session"
            self.receive()
            self.do(self.engine.tick({}))

    def seal(self, mtype, plaintext: bytes) -> bytes:
        counter = self.counter
        self.counter += 1
        box = crypto.secretbox_seal(self.kp.send_key, counter, plaintext)
        return wire.TRANSPORT_HEADER.pack(mtype, self.kp.remote_index, counter) + box

    def control(self, msg):
        self.sock.sendto(self.channel.seal(self.rv.id, msg), self.rv_addr)

    def answer(self, kind, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.receive()
            if got is not None and isinstance(got[1], kind):
                return got[1]
        raise AssertionError("no %s from the rendezvous" % kind.__name__)


# --------------------------------------------------------------- item 3
@pytest.mark.parametrize("b_datapath", DATAPATHS)
def test_no_member_turns_a_node_into_a_reflector(daemon_factory, tmp_path, sniffer, b_datapath):
    """m, a peer that the rendezvous serves and b accepts, registers seven
    "local endpoints" at a victim (home 3's public address) and keeps asking
    where b is while its pings wait; then it leaves.  What b sends to the
    victim is counted where the victim is: a few tries per endpoint a
    registration may carry, and nothing once m is gone: not after the
    tries' backoff (10 s after m left), and not once the rendezvous forgot
    m's registration (``registration_ttl``, 8 s here instead of 20, so that
    moment comes sooner; after it nobody can learn m's endpoints)."""
    victim = "10.212.0.13"
    # m's home maps per destination: its punches never meet b's, so it keeps asking
    with netns.internet(homes=3, random_fully=(1,), udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        at_victim = sniffer(net.inet, "h3", "udp and dst host %s" % victim, name="victim")
        rv = make_node(tmp_path, "rv", 10, net.rv)
        m = make_node(tmp_path, "m", 1, net["a"])
        b = make_node(tmp_path, "b", 2, net["b"])
        write_config(rv, mode="tun", ipv6=False, extra={"rendezvous": True},
                     tunables=dict(FAST_TUNABLES, registration_ttl=REGISTRATION_TTL),
                     peers=[peer_entry(n, mode="tun", endpoint=False, allowed=[]) for n in (m, b)])
        write_config(m, mode="tun", ipv6=False, tunables=FAST_TUNABLES,
                     extra={"endpoints": ["%s:%d" % (victim, 5000 + i) for i in range(7)]},
                     peers=[rv_entry(rv), peer_entry(b, mode="tun", endpoint=False, ipv6=False)])
        write_config(b, mode="tun", ipv6=False, tunables=FAST_TUNABLES,
                     peers=[rv_entry(rv), peer_entry(m, mode="tun", endpoint=False, ipv6=False)])
        start(daemon_factory, rv, "reference")
        start(daemon_factory, b, b_datapath)
        start(daemon_factory, m, "reference")
        for n in (m, b):
            n.wait_peer_state("rv", "established", timeout=10)
            registered(n)
        pinger = m.host.popen(["ping", "-i", "0.5", "-w", "20", b.tun4], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        try:
            pinger.wait(30)
        finally:
            pinger.kill()
            pinger.wait(5)
        punches = rv.status()["nat"]["rendezvous"]["punches"]
        assert punches >= 3, "m asked where b is again and again (%d punch requests)" % punches
        assert b.peer("m")["state"] != "established", "no direct path: m kept punching"
        m.daemon.stop()                                # m leaves
        left = time.time()
        # the rendezvous forgets m's registration (not renewed for registration_ttl)
        wait_for(lambda: rv.status()["nat"]["rendezvous"]["peers"] == 1, timeout=REGISTRATION_TTL + 5,
                 interval=0.25, what="the rendezvous forgets m's registration")
        forgot = time.time()
        # then watch the victim past both: QUIET s past the 10 s mark, and past
        # the end of any tries of what b could have learnt before m was forgotten
        time.sleep(max(0.0, max(left + 10 + QUIET, forgot + TRIES_SPAN + 1.0) - time.time()))
        sent = [(p.ts, p.udp()) for p in at_victim.stop()]
        sent = [(ts, u) for ts, u in sent if u is not None and u.dst == victim]
        assert 0 < len(sent) <= REFLECTION_BOUND, "%d datagrams reached the victim (bound %d)" % (
            len(sent), REFLECTION_BOUND)
        late = [u for ts, u in sent if ts > left + 10]
        assert late == [], "b still sent %d datagrams to the victim after m left (%s s after)" % (
            len(late), ", ".join("%.1f" % (ts - left) for ts, u in sent if ts > left + 10))
        print("victim got %d datagrams, at %s s from m leaving; the rendezvous forgot m after %.1f s" % (
            len(sent), ", ".join("%.1f" % (ts - left) for ts, _ in sent), forgot - left))


# --------------------------------------------------------------- item 6
def test_relay_frames_between_peers_that_do_not_accept_each_other_are_not_forwarded(
        daemon_factory, tmp_path, sniffer, datapath):
    """a and b accept each other and talk through the relay (both homes map
    per destination).  m, a member of the relay that b does not accept, is
    refused at where-is and then sends 2,000 relay frames tagged with every
    small id (the first eight many times) and random ones.  Nothing reaches b's interface; the relay
    counts each as relay_unknown_id."""
    with netns.internet(hosts_per_home=2, random_fully=(1, 2), udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        rv = make_node(tmp_path, "rv", 10, net.rv)
        a = make_node(tmp_path, "n1", 1, net["a"])
        b = make_node(tmp_path, "n2", 2, net["b"])
        m = make_node(tmp_path, "m", 3, net["a2"])          # its key; this test is its process
        write_config(rv, mode="tun", ipv6=False, tunables=FAST_TUNABLES,
                     extra={"rendezvous": True, "relay": True},
                     peers=[peer_entry(n, mode="tun", endpoint=False, allowed=[]) for n in (a, b, m)])
        write_config(a, mode="tun", ipv6=False, tunables=FAST_TUNABLES,
                     peers=[rv_entry(rv), peer_entry(b, mode="tun", endpoint=False, ipv6=False)])
        write_config(b, mode="tun", ipv6=False, tunables=FAST_TUNABLES,
                     peers=[rv_entry(rv), peer_entry(a, mode="tun", endpoint=False, ipv6=False)])
        start(daemon_factory, rv, datapath)
        for n in (a, b):
            start(daemon_factory, n, "reference")
        for n in (a, b):
            n.wait_peer_state("rv", "established", timeout=10)
            registered(n)
        assert a.host.ns.ping(b.tun4, timeout=5), "a reaches b through the relay"
        assert a.peer("n2")["path"] == "relayed via rv"
        hostile = Hostile(net["a2"], m, rv)
        try:
            hostile.handshake()
            hostile.control(wire.Register((), (decode_public_key(b.pub),)))
            hostile.answer(wire.Registered)
            hostile.control(wire.WhereIs(decode_public_key(b.pub)))
            refused = hostile.answer(wire.Endpoints)
            assert refused.endpoints == () and refused.relay_id == 0, "refused at where-is"
            # a and b keep probing for a direct path through the relay: m's
            # frames are told apart at b by their size (no legitimate frame
            # here is that long; each hop's seal hides the rest)
            def relayed():
                return rv.status()["nat"]["relayed"]

            at_b = sniffer(net["b"], "eth0", "udp and dst host %s" % net["b"].ip, name="b-eth0")
            before = relayed()
            inner = bytes([wire.MessageType.TRANSPORT, 0, 0, 0]) + secrets.token_bytes(773)
            size = wire.TRANSPORT_OVERHEAD + wire.RELAY_ID.size + len(inner)
            # every small id once, the first eight (where config order would put b) 192 times
            # each, and random ones
            ids = list(range(64)) + [1 + i % 8 for i in range(1536)] + [secrets.randbits(32) for _ in range(400)]
            for i, rid in enumerate(ids):
                hostile.sock.sendto(hostile.seal(wire.MessageType.RELAY, wire.RELAY_ID.pack(rid) + inner),
                                    hostile.rv_addr)
                if i % 50 == 49:
                    time.sleep(0.01)
            def handled(r):                 # forwarded or dropped, whatever the reason
                return sum(v for k, v in r.items() if k != "pairs")

            wait_for(lambda: handled(relayed()) - handled(before) >= len(ids), timeout=15,
                     what="the relay handled all 2,000 frames")
            time.sleep(0.5)
            at_b.stop()
            frames = [u for u in at_b.udp() if u.payload[:1] in (b"\x06", b"\x07")]   # relay frames
            from_m = [u for u in frames if len(u.payload) in (size, size + wire.AEGIS256_EXTRA)]
            assert from_m == [], "%d relay frames from m reached b" % len(from_m)
            assert relayed()["unknown_id"] - before["unknown_id"] == len(ids)
            assert rv.status()["drops"]["relay_unknown_id"] >= len(ids)
        finally:
            hostile.close()
        # a and b still talk through the relay
        assert a.host.ns.ping(b.tun4, timeout=5)


# --------------------------------------------------------------- item 11
def test_one_key_cannot_hold_many_sessions_on_the_rendezvous(daemon_factory, tmp_path, datapath):
    """A member initiates 60 times a second for 5 s (each answered): the
    rendezvous keeps at most three sessions for its key."""
    with netns.internet(homes=1, udp_timeout=UDP_CONNTRACK_TIMEOUT) as net:
        rv = make_node(tmp_path, "rv", 10, net.rv)
        m = make_node(tmp_path, "m", 1, net["a"])
        write_config(rv, mode="tun", ipv6=False, tunables=FAST_TUNABLES, extra={"rendezvous": True},
                     peers=[peer_entry(m, mode="tun", endpoint=False, allowed=[])])
        start(daemon_factory, rv, datapath)
        hostile = Hostile(net["a"], m, rv)
        try:
            hostile.handshake()
            first = hostile.responses
            t0 = time.monotonic()
            sent = 0
            deadline = t0 + 60                          # a loaded machine answers more slowly
            while hostile.responses - first < 300 and time.monotonic() < deadline:
                if hostile.rv.pending is None and time.monotonic() >= t0 + sent / 60:
                    hostile.do(hostile.engine.rehandshake(hostile.rv.id, "flood"))   # at most 60/s
                    sent += 1
                hostile.receive(0.02)
                hostile.do(hostile.engine.tick({}))     # a lost one is sent again
            answered = hostile.responses - first
            assert answered >= 300, "the rendezvous answered %d of %d initiations" % (answered, sent)
        finally:
            hostile.close()
        sessions = rv.peer("m")["sessions"]
        assert sessions <= 3, "one key holds %d sessions on the rendezvous" % sessions
