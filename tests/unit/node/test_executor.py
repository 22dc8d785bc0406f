"""The node's executor (phantom/node/executor.py) between two real engines:
it carries out the engine's actions on the data path, keys before sends, and
shows each one to its observers (NAT traversal, the directory link), whose
answers it carries out too; an observer takes the control datagrams of its
message types, the engine the rest."""

from __future__ import annotations

from phantom import wire
from phantom.constants import Tunables
from phantom.control import actions as A
from phantom.control.engine import Engine
from phantom.node.executor import Executor, Observer
from tests.support.clock import Clock
from tests.support.engines import ADDR_A, ADDR_B, private_key, sends


class RecordingDataPath:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name,) + a)


class Recorder(Observer):
    message_types = frozenset((int(wire.MessageType.PEER_CONTROL),))

    def __init__(self, dp):
        self.dp = dp
        self.seen = []
        self.datagrams = []

    def observe(self, action):
        # the data path has carried the action out already when an observer sees it
        self.seen.append((type(action).__name__, len(self.dp.calls)))
        if isinstance(action, A.ClearKeys):
            return [A.SendKeepalive(action.peer_id)]     # an answer the executor carries out
        return []

    def datagram(self, data, addr):
        self.datagrams.append((data, addr))
        return []


def _pair():
    t = Tunables()
    clock, wall = Clock(), Clock(1.7e9)
    a = Engine(private_key(), t, clock=clock, wall_clock=wall)
    b = Engine(private_key(), t, clock=clock, wall_clock=wall)
    pa = a.add_peer(b.public_key, "b", [], ADDR_B)
    pb = b.add_peer(a.public_key, "a", [], ADDR_A)
    return a, b, pa, pb


def test_actions_reach_the_data_path_then_the_observers():
    a, b, pa, pb = _pair()
    ex = Executor(b, 1.0, on_failure=print)
    dp = RecordingDataPath()
    ex.attach(dp)
    rec = Recorder(dp)
    ex.observers.append(rec)
    (init,) = sends(a.open(pa.id))
    ex.control_packet(init.data, ADDR_A)             # not claimed: the engine answers it
    names = [c[0] for c in dp.calls]
    assert names.index("install_keypair") < names.index("send_control"), "keys before sends"
    assert rec.datagrams == []
    # each action was carried out before the observers saw it
    assert ("InstallKeypair", names.index("install_keypair") + 1) in rec.seen
    assert ("SendDatagram", names.index("send_control") + 1) in rec.seen

    ex.control_packet(bytes([wire.MessageType.PEER_CONTROL]) + bytes(40), ADDR_A)
    assert len(rec.datagrams) == 1, "a peer-control datagram goes to the observer that claims it"

    dp.calls.clear()
    ex.do(b.remove_peer(pb.id))                      # ClearKeys: the observer answers a keepalive
    assert [c[0] for c in dp.calls] == ["clear_keys", "send_keepalive"]


def test_announcements_reach_the_observers_alone():
    a, b, pa, pb = _pair()
    ex = Executor(b, 1.0, on_failure=print)
    dp = RecordingDataPath()
    ex.attach(dp)
    rec = Recorder(dp)
    ex.observers.append(rec)
    ex.do([A.UnknownKey(bytes(32), ADDR_A)])
    assert dp.calls == [] and rec.seen == [("UnknownKey", 0)]


def test_a_batch_of_control_packets_is_carried_out_in_order_keys_before_sends():
    """control_packets (what the fast path drained at once): observers take
    their types in place, the engine answers the rest (the C responder's
    batches of Executor.BATCH), each answer's keys installed before it leaves."""
    t = Tunables()
    clock, wall = Clock(), Clock(1.7e9)
    b = Engine(private_key(), t, clock=clock, wall_clock=wall, native_handshake=True)
    initiators = []
    for i in range(Executor.BATCH + 5):
        a = Engine(private_key(), t, clock=clock, wall_clock=wall)
        pa = a.add_peer(b.public_key, "b", [], ADDR_B)
        b.add_peer(a.public_key, "a%d" % i, [], ADDR_A)
        initiators.append((a, pa))
    ex = Executor(b, 1.0, on_failure=print)
    dp = RecordingDataPath()
    ex.attach(dp)
    rec = Recorder(dp)
    ex.observers.append(rec)
    items = []
    for i, (a, pa) in enumerate(initiators):
        (init,) = sends(a.open(pa.id))
        items.append((init.data, ("10.0.0.%d" % (i + 1), 9000)))
        if i == 3:
            items.append((bytes([wire.MessageType.PEER_CONTROL]) + bytes(40), ADDR_A))
    ex.control_packets(items)
    assert len(rec.datagrams) == 1
    sent = [c for c in dp.calls if c[0] == "send_control"]
    assert len(sent) == len(initiators), "every initiation answered"
    installs = [i for i, c in enumerate(dp.calls) if c[0] == "install_keypair"]
    sends_at = [i for i, c in enumerate(dp.calls) if c[0] == "send_control"]
    assert all(k < s for k, s in zip(installs, sends_at)), "keys before sends, answer by answer"
    for (a, pa), call in zip(initiators, sent):             # in arrival order, each taken by its initiator
        assert call[2] == ("10.0.0.%d" % (initiators.index((a, pa)) + 1), 9000)
        assert any(isinstance(x, A.InstallKeypair) for x in a.handle_datagram(call[1], ADDR_B))
