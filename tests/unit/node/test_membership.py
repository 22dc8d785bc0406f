"""The member daemon's logic (phantom/node/membership.py), sans-IO: the
start-up checks of the state directory, the member stream's events carried
to the peer door (the real engine and PeerTable over a data path that
records what it is asked), the handler table, the cache, admission from the
handshake and the renewal time.  Certificates are real (tests/unit/network/
factory.py); time is injected."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.errors import ConfigError
from phantom.network.canonical import b64
from phantom.node import membership as M
from phantom.node import memberstream as S
from phantom.dataplane.types import Mode
from phantom.network import policy as P
from phantom.node.config import NetworkSection
from phantom.node.firewall import FirewallSlot
from phantom.node.peers import PeerTable
from tests.unit.network.factory import DAY, NOW, Net, seed, x25519_key
from tests.unit.node.test_reload import RecordingDataPath


class Clock:
    def __init__(self, t=NOW + 10):
        self.t = t

    def __call__(self):
        return self.t


class Daemon:
    """The parts of a daemon membership.py uses: the real engine and peer door."""

    def __init__(self, name="me"):
        self.engine = Engine(bytearray(seed("x25519:" + name)), Tunables())
        self.dp = RecordingDataPath()
        self.done = []
        self.peers = PeerTable(self.engine, self.done.extend, self.dp)
        self.executor = SimpleNamespace(do=self.done.extend)
        self.directory = None
        self.shutdown = asyncio.Event()
        self.s = SimpleNamespace(addresses=())
        self.firewall = FirewallSlot(Mode.TUN, {}, {})


def write_state(tmp_path, net, cert):
    state = tmp_path / "network"
    state.mkdir(exist_ok=True)
    (state / "definition.json").write_bytes(net.definition.encode() + b"\n")
    (state / "certificate.json").write_bytes(cert.encode())
    return state


def section(net, state):
    return NetworkSection(net.definition.fingerprint, net.definition.name,
                          ("http://10.0.0.1:4568",), state)


@pytest.fixture
def world(tmp_path):
    net = Net()
    me = net.cert("me", groups=["servers"])
    state = write_state(tmp_path, net, me)
    return SimpleNamespace(net=net, me=me, state=state, clock=Clock())


def member_of(world, daemon=None):
    d = daemon or Daemon()
    m = M.Membership(d, section(world.net, world.state), bytearray(seed("x25519:me")),
                     clock=world.clock)
    m.install()
    return d, m


def ev(seq, cert=None, removal=None, endpoints=None, **kw):
    if cert is not None:
        e = {"seq": seq, "op": "member", "cert": cert.doc}
        if endpoints is not None:
            e["endpoints"] = endpoints
        return e
    if removal is not None:
        return {"seq": seq, "op": "removed", "removal": removal.doc}
    return dict(seq=seq, **kw)


def peer_of(d, name):
    return d.engine.peer_by_key(x25519_key(name))


# --------------------------------------------------------------------------- start-up
def test_start_refuses_a_missing_expired_foreign_or_removed_certificate(tmp_path, world):
    d = Daemon()
    key = bytes(d.engine.public_key)
    # nothing joined
    with pytest.raises(ConfigError) as e:
        M.load_identity(tmp_path / "nowhere", world.net.definition.fingerprint, key, NOW)
    assert "run `phantom join TOKEN`" in str(e.value)
    # expired
    with pytest.raises(ConfigError) as e:
        M.load_identity(world.state, world.net.definition.fingerprint, key, world.me.not_after + 1)
    assert "certificate expired" in str(e.value) and "join again" in str(e.value)
    # another machine's certificate
    (tmp_path / "o").mkdir()
    other = write_state(tmp_path / "o", world.net, world.net.cert("other"))
    with pytest.raises(ConfigError) as e:
        M.load_identity(other, world.net.definition.fingerprint, key, NOW + 10)
    assert "certificate is for another key" in str(e.value)
    # a definition of another network than [network] names
    with pytest.raises(ConfigError) as e:
        M.load_identity(world.state, Net(name="other").definition.fingerprint, key, NOW + 10)
    assert "the [network] section names network" in str(e.value)
    # a certificate of another network
    net2 = Net(name="corp", tag="2")
    (world.state / "certificate.json").write_bytes(net2.cert("me").encode())
    with pytest.raises(ConfigError) as e:
        M.load_identity(world.state, world.net.definition.fingerprint, key, NOW + 10)
    assert "not a member of corp" in str(e.value)
    # a cached removal of our own key
    (world.state / "certificate.json").write_bytes(world.me.encode())
    d, m = member_of(world)
    m.apply_event(ev(1, removal=world.net.removal(bytes(d.engine.public_key), now=NOW + 5)))
    assert m.save(force=True)
    with pytest.raises(ConfigError) as e:
        member_of(world)
    assert "was removed by the network corp" in str(e.value)


# --------------------------------------------------------------------------- the stream
def test_members_become_peers_with_exactly_their_certificate_addresses_and_groups(world):
    d, m = member_of(world)
    net = world.net
    a, b = net.cert("alice", groups=["laptops"]), net.cert("bob")
    snap = {"seq": 7, "network": net.definition.fingerprint,
            "members": [world.me.doc, a.doc, b.doc], "removals": []}
    changes = m.apply_page(snap)
    assert {c.kind for c in changes} == {"added"} and m.members.seq == 7
    pa, pb = peer_of(d, "alice"), peer_of(d, "bob")
    assert sorted(map(str, pa.allowed_ips)) == sorted(["%s/32" % a.ipv4, "%s/128" % a.ipv6])
    assert pa.endpoint is None and pa.dynamic                     # endpoints come on demand
    assert d.peers.groups_of(pa) == ("laptops",) and d.peers.groups_of(pb) == ()
    assert sorted(p.name for p in d.engine.peers.values()) == ["alice", "bob", "rendezvous"]
    # a member event with endpoints: the endpoint is used, the allowed IPs stay the certificate's
    c = net.cert("carol")
    m.apply_page({"seq": 9, "events": [ev(8, c, endpoints=["192.0.2.7:9000"])], "more": False})
    pc = peer_of(d, "carol")
    assert pc.endpoint == ("192.0.2.7", 9000)
    assert sorted(map(str, pc.allowed_ips)) == sorted(["%s/32" % c.ipv4, "%s/128" % c.ipv6])
    # a certificate claiming alice's address (a faulty issuer): shadowed, never a peer
    thief = net.cert("thief", ipv4=a.ipv4)
    m.apply_event(ev(10, thief))
    assert peer_of(d, "thief") is None and m.members.stats["conflicts"] == 1
    # a removal drops the peer (its keys are zeroed: ClearKeys) and its routes
    pid = pa.id
    m.apply_event(ev(11, removal=net.removal(a.key, now=NOW + 5)))
    assert peer_of(d, "alice") is None
    assert A.ClearKeys(pid) in d.done and ("remove_peer", pid) in d.dp.calls
    # ...and the shadowed thief does not take the address over: it claimed it while alice held it
    assert m.stats["peers_removed"] == 1


def test_stale_forged_unknown_and_handled_ops(world):
    d, m = member_of(world)
    net = world.net
    a = net.cert("alice")
    m.apply_event(ev(3, a))
    assert m.apply_event(ev(3, net.cert("late"))) == [] and m.stats["stale_events"] == 1
    # a forged certificate (another authority's admission key): counted, skipped, seq advances
    forged = Net(tag="evil").cert("mallory")
    assert m.apply_event(ev(4, forged)) == [] and m.members.seq == 4
    assert m.stats["refused_events"] == 1 and peer_of(d, "mallory") is None
    # an op nothing handles: skipped, the stream goes on
    assert m.apply_event({"seq": 5, "op": "routes", "doc": {}}) == []
    assert m.stats["unhandled_events"] == 1 and m.members.seq == 5
    # the network policy's handler is registered: a policy that is not one is refused, counted
    assert m.apply_event({"seq": 6, "op": "policy", "policy": {"x": 1}}) == []
    assert m.stats["policy_refused"] == 1 and m.stats["handler_errors"] == 0
    # a registered handler gets its op (without editing the loop)
    seen = []
    m.handlers["routes"] = seen.append
    m.apply_event({"seq": 6, "op": "routes", "doc": {"x": 1}})
    assert seen == [] and m.stats["stale_events"] == 2           # seq 6 was taken
    m.apply_event({"seq": 7, "op": "routes", "doc": {"x": 1}})
    assert seen == [{"seq": 7, "op": "routes", "doc": {"x": 1}}] and m.members.seq == 7
    m.handlers["routes"] = lambda e: 1 / 0                     # a failing handler: counted
    m.apply_event({"seq": 8, "op": "routes"})
    assert m.stats["handler_errors"] == 1 and m.members.seq == 8
    # garbage
    for bad in (None, [], {"seq": "8"}, {"seq": True, "events": []}):
        with pytest.raises(ValueError):
            m.apply_page(bad)
    assert m.apply_page({"seq": 9, "events": [None, {"seq": -1}, 5]}) == []
    assert m.stats["bad_events"] == 3
    with pytest.raises(ValueError):                              # another network's snapshot
        m.apply_page({"seq": 1, "network": "x" * 32, "members": [], "removals": []})


def test_expiry_removes_the_peer(world):
    d, m = member_of(world)
    short = world.net.cert("brief", lifetime=3600)
    m.apply_event(ev(1, short))
    assert peer_of(d, "brief") is not None
    world.clock.t = short.not_after + 1
    changes = m.expire()
    assert [c.kind for c in changes] == ["removed"] and peer_of(d, "brief") is None


def test_a_relayed_path_is_not_cached_as_a_members_endpoint(world):
    from phantom.dataplane.udp import RelayVia
    d, m = member_of(world)
    a = world.net.cert("alice")
    m.apply_page({"seq": 11, "events": [ev(11, a)], "more": False})
    m.observe(A.SetEndpoint(peer_of(d, "alice").id, RelayVia(1, 2886665780)))
    assert m.members.member(a.key).endpoints == ()
    m.observe(A.SetEndpoint(peer_of(d, "alice").id, ("192.0.2.1", 51820)))
    assert m.members.member(a.key).endpoints == ("192.0.2.1:51820",)
    assert m.save(force=True)
    d2, m2 = member_of(world)
    assert peer_of(d2, "alice") is not None


def test_the_cache_brings_members_and_their_last_endpoints_back_without_the_directory(world):
    d, m = member_of(world)
    net = world.net
    a, short = net.cert("alice"), net.cert("brief", lifetime=3600)
    m.apply_page({"seq": 12, "events": [ev(11, a), ev(12, short)], "more": False})
    # the data path learnt where alice is (a handshake answered from there)
    m.observe(A.SetEndpoint(peer_of(d, "alice").id, ("192.0.2.1", 51820)))
    assert m.save(force=True) and (world.state / "cache" / "members.json").exists()
    assert (world.state / "cache" / "members.json").stat().st_mode & 0o777 == 0o600
    # a restart an hour later: brief's certificate expired meanwhile
    world.clock.t = short.not_after + 1
    d2, m2 = member_of(world)
    assert m2.members.seq == 12                              # the stream resumes from here
    assert peer_of(d2, "alice").endpoint == ("192.0.2.1", 51820)
    assert peer_of(d2, "brief") is None
    # a damaged cache: started from nothing (the directory's snapshot), not a crash
    (world.state / "cache" / "members.json").write_bytes(b'{"v":1,')
    d3, m3 = member_of(world)
    assert m3.members.seq == 0 and [p.name for p in d3.engine.peers.values()] == ["rendezvous"]
    # the cache directory is the unprivileged user's: a symbolic link there is never
    # followed by the start (as root), whatever it points at
    saved = world.state / "saved.json"
    saved.write_bytes(m.members.snapshot())
    (world.state / "cache" / "members.json").unlink()
    (world.state / "cache" / "members.json").symlink_to(saved)
    d4, m4 = member_of(world)
    assert m4.members.seq == 0 and peer_of(d4, "alice") is None


# --------------------------------------------------------------------------- the handshake
def test_admit_unknown_adds_a_member_or_says_why_not(world):
    d, m = member_of(world)
    net = world.net
    a = net.cert("alice", groups=["laptops"])
    assert m.admit_unknown(a.key, a.encode(), ("192.0.2.1", 9000)) is None
    p = peer_of(d, "alice")
    assert p is not None and d.peers.groups_of(p) == ("laptops",)
    assert sorted(map(str, p.allowed_ips)) == sorted(["%s/32" % a.ipv4, "%s/128" % a.ipv6])
    # the key that presents it must be the certificate's
    b = net.cert("bob")
    assert m.admit_unknown(x25519_key("eve"), b.encode(), None) == "certificate is for another key"
    # expired
    old = net.cert("old", lifetime=3600)
    world.clock.t = old.not_after + 5
    assert m.admit_unknown(old.key, old.encode(), None) == "certificate expired"
    world.clock.t = NOW + 10
    # removed by the network
    gone = net.cert("gone")
    m.apply_event(ev(1, removal=net.removal(gone.key, now=NOW + 5)))
    assert m.admit_unknown(gone.key, gone.encode(), None) == "removed by the network"
    # another network, garbage, our own key
    other = Net(name="corp", tag="x").cert("alien")
    assert m.admit_unknown(other.key, other.encode(), None) == "not a member of corp"
    assert m.admit_unknown(b.key, b"\x00" * 40, None) == "malformed certificate"
    assert m.admit_unknown(world.me.key, world.me.encode(), None) == "not a member of corp"
    assert [peer_of(d, who) for who in ("bob", "old", "gone", "alien")] == [None] * 4
    # our certificate rides in our initiations (the handshake's interface)
    assert d.engine.membership == world.me.encode() and d.engine.admit_unknown == m.admit_unknown


def test_an_initiation_before_we_knew_the_member_is_answered_once_it_is_known(world):
    d, m = member_of(world)
    a = world.net.cert("alice")
    m.observe(A.UnknownKey(a.key, ("192.0.2.9", 9000)))
    m.apply_event(ev(1, a))
    p = peer_of(d, "alice")
    assert p.endpoint == ("192.0.2.9", 9000) and m.stats["knocks_answered"] == 1
    assert any(isinstance(x, A.SendDatagram) and x.addr == ("192.0.2.9", 9000) for x in d.done)


# --------------------------------------------------------------------------- renewal
def test_renewal_is_due_at_two_thirds_of_the_lifetime_and_backs_off(world):
    d, m = member_of(world)
    me = world.me
    at = M.renew_time(me)
    assert at == me.not_before + (me.not_after - me.not_before) * 2 / 3
    assert not m.renew_due(at - 1) and m.renew_due(at)
    waits = [S.backoff(n, rng=lambda: 0.5) for n in range(1, 8)]
    assert waits[0] == 0.5 and waits == sorted(waits) and max(waits) == S.MAX_BACKOFF


def test_a_renewed_certificate_is_used_and_survives_a_restart(world):
    d, m = member_of(world)
    world.clock.t = NOW + 20 * DAY
    new = world.net.cert("me", key=world.me.key, ipv4=world.me.ipv4, ipv6=world.me.ipv6,
                         groups=["servers"], now=NOW + 20 * DAY, since=world.me.since)
    m.use_certificate(new)
    assert d.engine.membership == new.encode()
    assert (world.state / "cache" / "certificate.json").read_bytes() == new.encode()
    # the original (join's) certificate has expired by now; the renewed one starts the node
    world.clock.t = world.me.not_after + 10
    with pytest.raises(ConfigError):                  # join's file alone: expired
        M.load_identity(world.state, world.net.definition.fingerprint, world.me.key,
                        world.clock.t)
    d2, m2 = member_of(world)
    assert m2.cert.serial == new.serial and b64(m2.cert.key) == b64(world.me.key)
    assert d2.engine.membership == new.encode()


def test_a_members_directory_record_gives_its_endpoint_never_wider_addresses(world):
    """The directory link follows members' records (dirlink.peer_record): a
    record signed by the member's own key that claims a whole prefix, and
    another member's address, moves the endpoint and nothing else."""
    from phantom.directory.records import NodeSigner, make_record, parse_record
    from phantom.node.dirlink import DirectoryLink
    d, m = member_of(world)
    net = world.net
    a, b = net.cert("alice"), net.cert("bob")
    m.apply_page({"seq": 2, "events": [ev(1, a), ev(2, b)], "more": False})
    pa = peer_of(d, "alice")
    before = sorted(map(str, pa.allowed_ips))
    signer = NodeSigner(bytearray(seed("x25519:alice")))
    doc = make_record(signer, "alice", ["192.0.2.44:9000"],
                      [str(net.definition.ipv4), "%s/32" % b.ipv4, "0.0.0.0/0"],
                      seq=1, expires=int(world.clock.t) + 3600)
    rec = parse_record(doc, world.clock.t)
    d.s = SimpleNamespace(addresses=(), directory=None, name=None, endpoints_auto=False,
                          endpoints=[], directory_allowed_ips=None)
    link = DirectoryLink(d, bytearray(32))
    link.peer_record(rec)
    assert pa.endpoint == ("192.0.2.44", 9000)
    assert sorted(map(str, pa.allowed_ips)) == before
    assert sorted(map(str, peer_of(d, "bob").allowed_ips)) == sorted(
        ["%s/32" % b.ipv4, "%s/128" % b.ipv6])
    n = len(d.dp.calls)
    link.peer_record(rec)                             # the same record again: nothing at all
    assert len(d.dp.calls) == n
    assert [c for c in d.dp.calls if c[0] == "update_routes"] == []   # no route ever changed


def test_the_definitions_rendezvous_is_a_peer_and_a_member_there_gets_its_addresses(world):
    """NAT traversal for members as for configured peers: the definition's
    rendezvous (an IP endpoint; the factory's relay is a host name: skipped)
    is a peer with its endpoint and a keepalive; when it is a member too it
    gets its certificate's addresses, and keeps being a rendezvous after a removal."""
    d, m = member_of(world)
    rv_key = x25519_key("rv")
    rv = d.engine.peer_by_key(rv_key)
    assert rv.endpoint == ("198.51.100.1", 51820) and rv.persistent_keepalive > 0
    assert list(rv.allowed_ips) == [] and m.server_keys() == [rv_key]
    cert = world.net.cert("hub", key=rv_key, groups=["infra"])
    m.apply_event(ev(1, cert))
    assert d.engine.peer_by_key(rv_key) is rv and len(d.engine.peers) == 1
    assert sorted(map(str, rv.allowed_ips)) == sorted(["%s/32" % cert.ipv4, "%s/128" % cert.ipv6])
    assert d.peers.groups_of(rv) == ("infra",)
    m.apply_event(ev(2, removal=world.net.removal(rv_key, now=NOW + 5)))
    assert d.engine.peer_by_key(rv_key) is rv and list(rv.allowed_ips) == []
    assert d.peers.groups_of(rv) == ()


def test_a_page_of_members_recompiles_the_firewall_groups_once(world):
    d, m = member_of(world)
    fired = []
    d.peers.on_groups = lambda: fired.append(d.peers.group_map())
    net = world.net
    certs = [net.cert("g%d" % i, groups=["laptops"] if i % 2 else ["servers"]) for i in range(6)]
    m.apply_page({"seq": 6, "events": [ev(i + 1, c) for i, c in enumerate(certs)], "more": False})
    assert len(fired) == 1
    ids = {c.name: peer_of(d, c.name).id for c in certs}
    assert fired[0] == {"laptops": frozenset(ids["g%d" % i] for i in (1, 3, 5)),
                        "servers": frozenset(ids["g%d" % i] for i in (0, 2, 4))}
    m.apply_page({"seq": 7, "events": [ev(7, net.cert("plain"))], "more": False})
    assert len(fired) == 1, "a member without groups changes no group"


POLICY = """\
default = "deny"

[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "icmp"
"""


def test_the_network_policy_from_the_stream_the_snapshot_and_the_cache(world):
    """Issue 21 item 3 on a member: the snapshot's policy and op=policy events
    compile into the firewall in place (the member's certificate says
    "servers", so the rule applies here); an older seq is ignored; a forged
    one is refused and counted; the policy in force is cached and enforced
    again by the next start before the directory answers."""
    d, m = member_of(world)
    net = world.net
    body = P.parse_policy_source(POLICY)
    p1 = P.sign_policy(body, net.definition, net.admission, 1, world.clock())
    p2 = P.sign_policy(P.parse_policy_source('default = "allow"\n'), net.definition,
                       net.admission, 2, world.clock())
    assert d.firewall.policy is None
    m.apply_page({"seq": 3, "network": net.definition.fingerprint, "members": [],
                  "removals": [], "policy": p1.doc})
    assert d.firewall.policy.seq == 1 and len(d.firewall.inbound.rules) == 1
    m.apply_page({"seq": 5, "events": [{"seq": 4, "op": "policy", "policy": p2.doc},
                                       {"seq": 5, "op": "policy", "policy": p1.doc}]})
    assert d.firewall.policy.seq == 2 and m.stats["policy_stale"] == 1
    evil = Net(tag="evil")
    forged = P.sign_policy(body, evil.definition, evil.admission, 9, world.clock())
    m.apply_event({"seq": 6, "op": "policy", "policy": forged.doc})
    assert d.firewall.policy.seq == 2 and m.stats["policy_refused"] == 1
    # the next start: the cached policy is in force at install, before any page
    d2, m2 = member_of(world)
    m2.install()
    assert d2.firewall.policy is not None and d2.firewall.policy.seq == 2
    # a renewed certificate with other groups: the policy compiled again for them
    m2.apply_event({"seq": 7, "op": "policy", "policy": P.sign_policy(
        body, net.definition, net.admission, 3, world.clock()).doc})
    assert len(d2.firewall.inbound.rules) == 1            # "to group:servers": us
    m2.use_certificate(net.cert("me", groups=["laptops"]))
    assert len(d2.firewall.inbound.rules) == 0            # no longer a server
