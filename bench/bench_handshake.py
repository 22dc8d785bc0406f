#!/usr/bin/env python3
"""The responder's work per handshake initiation, on its own (issue #15).

    .venv/bin/python bench/bench_handshake.py [--peers 1000] [--count 2000] [--profile]
                                              [--form 164|166|attached] [--attachment 532]
                                              [--datapath fast --ticks 21]

CPU time (process_time: every thread of the process, so the C responder's
helper threads count too), so a busy machine slows it less than wall time;
the wall time per initiation is printed as well.
No sockets, no event loop: an :class:`phantom.control.engine.Engine` with
``--peers`` configured peers is handed ``--count`` valid initiations (from
distinct keys, made by bench/hsload.py's generator) through
``handle_datagram``, as the daemon does for each one that arrives, and the
actions it returns (the response datagram, the endpoint, the keypair to
install) are built but not carried out.  Reported: microseconds per
initiation for the whole engine path and for its parts (mac1 check,
``consume_initiation``, ``create_response``), and with --profile the top of
a cProfile of the engine path.

``--form``: the prototype's 164-byte initiation (default), the 166-byte one
with a suites offer, or one with an attachment of ``--attachment`` bytes
after the offer (532: a 700-byte initiation, a membership certificate's
size), from keys the responder knows (so the attachment is carried and
decrypted, not looked at: the cost the attachment adds to every handshake).

Not under load (no cookies): that is the per-initiation cost a responder
pays once the initiator holds a cookie, plus the mac2 check (one keyed
BLAKE2b, ~1 us).
"""

from __future__ import annotations

import argparse
import os
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for p in (str(BENCH.parent), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import hsload  # noqa: E402
from phantom import crypto, wire  # noqa: E402
from phantom.constants import Tunables  # noqa: E402
from phantom.protocols.phantom import handshake as hs  # noqa: E402
from phantom.protocols.phantom.cookie import CookieChecker  # noqa: E402
from phantom.control.engine import Engine  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", type=int, default=1000)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--form", choices=("164", "166", "attached"), default="164")
    p.add_argument("--attachment", type=int, default=532, help="attachment bytes with --form attached")
    p.add_argument("--datapath", choices=("none", "reference", "fast"), default="none",
                   help="also carry out the actions on a data path in test mode, as the daemon does "
                        "(send the response, set the endpoint, install the keypair)")
    p.add_argument("--responder", choices=("auto", "python", "c"), default="auto",
                   help="the reference NoiseIK (python) or the C responder (_responder.pyx, c); "
                        "auto: c with --datapath fast, as phantomd --fast does, else python")
    p.add_argument("--warm", action="store_true",
                   help="first hand the engine one earlier initiation from each key (not measured), "
                        "as a hub whose peers re-handshake: the C responder then has each key's ss")
    p.add_argument("--batch", type=int, default=1,
                   help="hand the engine this many initiations a call (Engine.handle_datagrams, as "
                        "phantomd --fast does with what arrived together, 16 at a time); 1: one by one")
    p.add_argument("--ticks", type=int, default=0,
                   help="with --datapath: then time this many timer ticks over the peers that "
                        "handshook, as the executor ticks (the data path's counters read + "
                        "Engine.tick), reading every active peer's counters (counters_many) and "
                        "only the changed ones (counters_changed): CPU ms per tick, medians "
                        "(TICK_PROFILE=1 in the environment: a cProfile of the changed-only ticks too)")
    a = p.parse_args(argv)
    native = a.responder == "c" or (a.responder == "auto" and a.datapath == "fast")
    hub = bytearray(crypto.x25519_private())
    hub_pub = crypto.x25519_public(bytes(hub))
    privs = [crypto.x25519_private() for _ in range(a.peers)]
    # a huge load threshold: measure the answer path, not cookie replies
    eng = Engine(hub, Tunables(under_load_initiations=10 ** 9), native_handshake=native)
    rkey = hs.native_responder_key(hub, hub_pub) if native else None
    if native and rkey is None:
        p.error("--responder c: phantom/protocols/phantom/_responder is not built (setup.py build_ext)")
    for i, k in enumerate(privs):
        eng.add_peer(crypto.x25519_public(k), "p%d" % i, [])
    proto = hsload.PhantomProto(hub_pub, offer=a.form != "164",
                                attachment=os.urandom(a.attachment) if a.form == "attached" else None)
    t_ns = time.time_ns()
    msgs = hsload.build_pool(proto, privs, a.count, t_ns)
    warm = hsload.build_pool(proto, privs, min(a.count, a.peers), t_ns - 10 ** 9) if a.warm else []
    addr = ("10.202.0.1", 9000)
    do = None
    if a.datapath != "none":
        import socket
        from phantom.control import actions as A
        from phantom.dataplane.types import Mode
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        test = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        test.bind(("127.0.0.1", 0))
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        addr = sink.getsockname()
        if a.datapath == "fast":
            from phantom.dataplane.fast import FastDataPath as DP
        else:
            from phantom.dataplane.reference import ReferenceDataPath as DP
        dp = DP(Mode.TEST, udp, None, test, events=None, tunables=Tunables())
        for pid in eng.peers:
            dp.add_peer(pid, [])

        def do(actions):          # Daemon._do, the actions a handshake answer makes
            for act in actions:
                if isinstance(act, A.SendDatagram):
                    dp.send_control(act.data, act.addr)
                elif isinstance(act, A.InstallKeypair):
                    dp.install_keypair(act.keypair, act.confirmed)
                elif isinstance(act, A.SetEndpoint):
                    dp.set_endpoint(act.peer_id, act.addr)

    for m in warm:
        out = eng.handle_datagram(m, addr)
        if do is not None:
            do(out)
        if rkey is not None:
            rkey_info = hs.consume_initiation(hub, m, responder_key=rkey)
            rkey_info.state.clear()

    wall = {}

    def engine_path():
        t0, w0 = time.process_time(), time.perf_counter()
        answered = 0
        if a.batch > 1:
            for i in range(0, len(msgs), a.batch):
                for out in eng.handle_datagrams([(m, addr) for m in msgs[i:i + a.batch]]):
                    if do is not None:
                        do(out)
                    answered += bool(out)
        else:
            for m in msgs:
                out = eng.handle_datagram(m, addr)
                if do is not None:
                    do(out)
                answered += bool(out)
        wall["us"] = (time.perf_counter() - w0) / len(msgs) * 1e6
        return (time.process_time() - t0) / len(msgs) * 1e6, answered

    if a.profile:
        pr = cProfile.Profile()
        pr.enable()
        us, answered = engine_path()
        pr.disable()
        pstats.Stats(pr).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("TOP", "15")))
    else:
        us, answered = engine_path()
    if a.ticks and do is not None:
        def ticks(read, changed_only):
            out = []
            for _ in range(a.ticks):
                t0 = time.process_time()
                eng.tick(read(eng.active_ids()), changed_only=changed_only)
                out.append((time.process_time() - t0) * 1e3)
            return out
        every = ticks(dp.counters_many, False)
        changed = ticks(dp.counters_changed, True)
        if os.environ.get("TICK_PROFILE"):
            pr = cProfile.Profile()
            pr.enable()
            ticks(dp.counters_changed, True)
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(8)
        print(f"tick over {len(eng.active_ids())} active peers (counters read + Engine.tick), CPU ms, "
              f"median of {a.ticks}: every peer's counters {statistics.median(every):.2f}, "
              f"changed only {statistics.median(changed[1:] or changed):.2f} "
              f"(the first of these, which reads all: {changed[0]:.2f})")
    checker = CookieChecker(hub_pub, time.monotonic, 120.0)
    t0 = time.process_time()
    for m in msgs:
        checker.check_mac1(m)
    mac1_us = (time.process_time() - t0) / len(msgs) * 1e6
    t0 = time.process_time()
    infos = [hs.consume_initiation(hub, m, local_static_public=hub_pub, responder_key=rkey) for m in msgs]
    consume_us = (time.process_time() - t0) / len(msgs) * 1e6
    t0 = time.process_time()
    for i, info in enumerate(infos):
        hs.create_response(info.state, i + 1, suite=hs.choose_suite((wire.Suite.SECRETBOX,), info.offered))
    create_us = (time.process_time() - t0) / len(msgs) * 1e6
    t0 = time.process_time()
    for _ in range(len(msgs)):
        crypto.x25519(bytes(hub), hub_pub)
    dh_us = (time.process_time() - t0) / len(msgs) * 1e6
    print(f"peers {a.peers}, initiations {len(msgs)} of {len(msgs[0])} bytes (answered {answered}), "
          f"responder {'C (_responder.pyx)' if native else 'Python (noise.py)'}"
          f"{', warm (ss remembered)' if warm else ''}")
    what = "engine.handle_datagram" + ("" if do is None else " + %s data path" % a.datapath)
    if a.batch > 1:
        what += " in batches of %d" % a.batch
    print(f"{what} per initiation: {us:8.1f} us CPU (all threads), {wall['us']:8.1f} us wall "
          f"(= {1e6 / wall['us']:,.0f} per second)")
    print(f"  check_mac1:                          {mac1_us:8.1f} us")
    print(f"  consume_initiation:                  {consume_us:8.1f} us")
    print(f"  create_response:                     {create_us:8.1f} us")
    print(f"  one X25519 (libsodium via PyNaCl):   {dh_us:8.1f} us  (a responder needs 4: es, ss, ee, se"
          f" + 1 ephemeral key = {5 * dh_us:.0f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
