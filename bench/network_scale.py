"""A network of N members on the real directory and the real member code
(issue 20's bench/ item).  Synthetic keys, real Ed25519 signatures.

    .venv/bin/python bench/network_scale.py --sizes 1000,10000 [--joins 100] [--json out.json]

For each N:

* directory: a real ``phantom directory serve --network`` process on SQLite,
  on 127.0.0.1, whose store is filled beforehand with N members (certificates
  issued by the real code, written through the real SqlLedger); then
  - join latency: POST /network/join through the HTTP front end, ``--joins``
    sequential requests, then the same number from 4 concurrent clients
    (p50/p99, milliseconds, measured at the client);
  - CPU per membership change on the directory: the server process's
    utime+stime (/proc/PID/stat) over the sequential joins / their count,
    and the same for admin removals (POST /network/admin/members/NAME/remove);
  - time for one change to reach 100 watching members: 100 asyncio clients
    in this process poll GET /network/members?since=SEQ every POLL (1 s, the
    member daemon's interval); the admin POSTs a removal; the time from
    before the POST to the last client seeing the event (5 rounds).
* member: in a fresh subprocess (so its RSS is its own), the member daemon's
  real logic: phantom.node.membership.Membership with a real Engine and
  PeerTable (as tests/unit/node/test_membership.py builds them) over a data
  path that ignores what it is asked; a snapshot of N members applied
  through Membership.apply_page, then one-event pages (a new member, a
  removal, an endpoint change): CPU time per change (median, p99) and the
  process's RSS with N members known.

Nothing is asserted; the numbers go to bench/README.md and docs/network.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import nacl.bindings  # noqa: E402
from nacl.signing import SigningKey as _Ed  # noqa: E402

from phantom import crypto  # noqa: E402
from phantom.network import issue_certificate, make_removal, parse_token  # noqa: E402
from phantom.network.canonical import b64  # noqa: E402

CLI = [sys.executable, "-m", "phantom.cli"]
CLK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid="self") -> int:
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def ms(x):
    return round(x * 1e3, 2)


def synthetic_certs(definition, admission, n, now, start=0):
    """n certificates with consecutive addresses (allocation stepped by hand)."""
    base4 = int(definition.ipv4.network_address) + 1
    base6 = int(definition.ipv6.network_address)
    out = []
    for i in range(start, start + n):
        v4 = ipaddress.IPv4Address(base4 + i)
        out.append(issue_certificate(definition, admission,
                                     key=crypto.x25519_public(crypto.random_bytes(32)),
                                     name="m%d" % i, ipv4=v4,
                                     ipv6=ipaddress.IPv6Address(base6 | int(v4)),
                                     serial=i + 1, now=int(now) - 60,
                                     groups=["g%d" % (i % 10)]))
    return out


# ------------------------------------------------------------------------------------ member side
def member_side(n, changes):
    """Run in a fresh process: prints one JSON line."""
    from types import SimpleNamespace

    from phantom.constants import Tunables
    from phantom.control.engine import Engine
    from phantom.dataplane.types import Mode
    from phantom.network import SigningKey, make_definition
    from phantom.node import membership as M
    from phantom.node.config import NetworkSection
    from phantom.node.firewall import FirewallSlot
    from phantom.node.peers import PeerTable

    class QuietDataPath:
        """Takes what the peer door asks of a data path and keeps nothing."""

        def __getattr__(self, name):
            return lambda *a, **k: None

    now = time.time()
    authority = SigningKey(crypto.random_bytes(32))
    admission = SigningKey(crypto.random_bytes(32))
    definition = make_definition(authority, "bench", int(now) - 86400, ipv4="100.64.0.0/10",
                                 ipv6="fd00:1:2::/48", directory=["http://127.0.0.1:1"],
                                 admission=[(admission.public, int(now) + 365 * 86400)])
    my_key = bytearray(crypto.random_bytes(32))
    certs = synthetic_certs(definition, admission, n + changes + 1, now)
    me = issue_certificate(definition, admission, key=crypto.x25519_public(bytes(my_key)),
                           name="me", ipv4=ipaddress.IPv4Address("100.127.255.254"),
                           ipv6=ipaddress.IPv6Address("fd00:1:2::ffff:fffe"), serial=10 ** 7,
                           now=int(now) - 60)
    base, extra = certs[:n], certs[n:]
    removals = [make_removal(definition, admission, base[i * (n // changes or 1) % n].key,
                             int(now)) for i in range(changes)]
    tmp = tempfile.mkdtemp(prefix="phantom-bench-member-")
    try:
        state = os.path.join(tmp, "network")
        os.mkdir(state, 0o700)
        with open(os.path.join(state, "definition.json"), "wb") as f:
            f.write(definition.encode() + b"\n")
        with open(os.path.join(state, "certificate.json"), "wb") as f:
            f.write(me.encode())

        async def run():
            engine = Engine(my_key, Tunables())
            dp = QuietDataPath()
            daemon = SimpleNamespace(engine=engine, dp=dp, directory=None,
                                     shutdown=asyncio.Event(), s=SimpleNamespace(addresses=()),
                                     firewall=FirewallSlot(Mode.TUN, {}, {}))
            daemon.peers = PeerTable(engine, lambda acts: None, dp)
            daemon.executor = SimpleNamespace(do=lambda acts: None)
            from pathlib import Path
            m = M.Membership(daemon, NetworkSection(definition.fingerprint, "bench",
                                                    ("http://127.0.0.1:1",), Path(state)),
                             bytearray(my_key), clock=time.time)
            m.install()
            rss0 = rss_kib()
            snap = {"seq": n, "network": definition.fingerprint,
                    "members": [c.doc for c in base], "removals": [], "policy": None}
            t0 = time.process_time()
            m.apply_page(snap)
            load_cpu = time.process_time() - t0
            del snap
            result = {"members": n, "peers": len(engine.peers) if hasattr(engine, "peers")
                      else None, "snapshot_cpu_s": round(load_cpu, 3),
                      "rss_before_kib": rss0, "rss_kib": rss_kib()}
            seq = n
            for kind in ("add", "remove", "endpoints"):
                times = []
                for i in range(changes):
                    seq += 1
                    if kind == "add":
                        ev = {"seq": seq, "op": "member", "cert": extra[i].doc}
                    elif kind == "remove":
                        ev = {"seq": seq, "op": "removed", "removal": removals[i].doc}
                    else:
                        ev = {"seq": seq, "op": "endpoints", "key": b64(base[-1 - i].key),
                              "endpoints": ["192.0.2.%d:51820" % (i % 250 + 1)]}
                    page = {"seq": seq, "events": [ev], "more": False}
                    t0 = time.process_time()
                    m.apply_page(page)
                    times.append(time.process_time() - t0)
                result[kind] = {"median_us": round(statistics.median(times) * 1e6, 1),
                                "p99_us": round(pct(times, 0.99) * 1e6, 1)}
            result["stats"] = {k: v for k, v in m.stats.items() if v}
            return result

        print(json.dumps(asyncio.run(run())), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def member_side_subprocess(n, changes):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--member-only", str(n),
                          "--changes", str(changes)], capture_output=True, text=True,
                         timeout=1200, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError("member side failed: " + out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- directory side
def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def fill_store(db, auth, n):
    """N members in the SQLite store, through the real SqlLedger, before the server starts."""
    from phantom.directory.store.sqlite import DirectoryStore
    from phantom.network.authority import AuthorityDir
    from phantom.network.join import MemberRecord

    a = AuthorityDir.open(auth)
    certs = synthetic_certs(a.definition, a.admission, n, time.time())
    store = DirectoryStore(db)

    tables = await store.network().open(a.definition)

    def fill(led):
        for c in certs:
            led.next_serial()
            led.save_member(MemberRecord(c, "bench"))
            led.append({"op": "member", "cert": c.doc})
    tables.transact_sync(fill)
    store.close()
    return certs


async def directory_side(n, joins, watchers, rounds):
    import aiohttp

    from phantom.network import join as J

    tmp = tempfile.mkdtemp(prefix="phantom-bench-dir-")
    proc = None
    try:
        port = free_port()
        url = "http://127.0.0.1:%d" % port
        auth = os.path.join(tmp, "authority")
        subprocess.run(CLI + ["network", "init", "bench", "--dir", auth, "--ipv4",
                              "100.64.0.0/10", "--directory", url], check=True,
                       capture_output=True, timeout=60, cwd=ROOT)
        db = os.path.join(tmp, "dir.sqlite")
        t0 = time.monotonic()
        certs = await fill_store(db, auth, n)
        fill_s = time.monotonic() - t0
        with open(os.path.join(auth, "admin.token")) as f:
            admin = {"Authorization": "Bearer " + f.read().strip()}
        log = open(os.path.join(tmp, "serve.log"), "w")
        proc = subprocess.Popen(CLI + ["directory", "serve", "--listen", "127.0.0.1", "--port",
                                       str(port), "--db", db, "--network", auth,
                                       "--source-writes-per-minute", "0",
                                       "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with http.get(url + "/network") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("directory did not start: " + open(log.name).read()[-2000:])
                await asyncio.sleep(0.2)
            async with http.post(url + "/network/admin/invites", headers=admin,
                                 json={"uses": 3 * joins, "expires": 3600}) as r:
                assert r.status == 201, await r.text()
                token = parse_token((await r.json())["token"])

            def request(i):
                sk = _Ed(crypto.random_bytes(32))
                ed = bytes(sk.verify_key)
                key = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed)
                return J.make_join_request(token, key, ed, lambda m: sk.sign(m).signature,
                                           time.time(), name="j%d" % i)

            async def one_join(i):
                body = request(i)
                t = time.perf_counter()
                async with http.post(url + "/network/join", json=body) as r:
                    text = await r.text()
                    if r.status != 200:
                        raise RuntimeError("join %d: %d %s" % (i, r.status, text))
                return time.perf_counter() - t

            # sequential joins, and the server's CPU over them
            c0 = cpu_s(proc.pid)
            seq_times = [await one_join(i) for i in range(joins)]
            join_cpu = (cpu_s(proc.pid) - c0) / joins
            # 4 concurrent clients
            conc_times = []

            async def client(k):
                for i in range(joins // 4):
                    conc_times.append(await one_join(10 ** 6 + k * 10 ** 4 + i))
            t = time.perf_counter()
            await asyncio.gather(*(client(k) for k in range(4)))
            conc_wall = time.perf_counter() - t
            # removals by the admin, and the server's CPU over them
            names = ["m%d" % (i * (n // joins or 1) % n) for i in range(joins // 2)]
            c0 = cpu_s(proc.pid)
            rem_times = []
            for name in names:
                t = time.perf_counter()
                async with http.post(url + "/network/admin/members/%s/remove" % name,
                                     headers=admin) as r:
                    assert r.status == 200, await r.text()
                rem_times.append(time.perf_counter() - t)
            remove_cpu = (cpu_s(proc.pid) - c0) / len(names)
            # one change to 100 watching members
            async with http.get(url + "/network/members?since=0") as r:
                seq = (await r.json())["seq"]
            from phantom.node.memberstream import POLL
            spread = []
            victims = iter("m%d" % (n - 1 - i) for i in range(rounds))
            stop = asyncio.Event()
            seen = {}
            latest = {"seq": seq}

            async def watcher(w):
                since = latest["seq"]
                await asyncio.sleep(POLL * w / watchers)         # spread over the interval
                while not stop.is_set():
                    async with http.get(url + "/network/members?since=%d" % since) as r:
                        page = await r.json()
                    for e in page["events"]:
                        seen.setdefault(e["seq"], {})[w] = time.perf_counter()
                    if page["events"]:
                        since = page["events"][-1]["seq"]
                    await asyncio.sleep(POLL)
            tasks = [asyncio.ensure_future(watcher(w)) for w in range(watchers)]
            await asyncio.sleep(POLL + 0.5)
            for _ in range(rounds):
                t = time.perf_counter()
                async with http.post(url + "/network/admin/members/%s/remove" % next(victims),
                                     headers=admin) as r:
                    target = (await r.json())["seq"]
                deadline = time.monotonic() + 30
                while len(seen.get(target, {})) < watchers and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                got = seen.get(target, {})
                spread.append({"last_s": round(max(got.values()) - t, 3) if got else None,
                               "first_s": round(min(got.values()) - t, 3) if got else None,
                               "saw": len(got)})
                await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        server_rss = rss_kib(proc.pid)
        return {"members": n, "fill_s": round(fill_s, 1),
                "join_seq": {"p50_ms": ms(pct(seq_times, 0.5)), "p99_ms": ms(pct(seq_times, 0.99)),
                             "n": len(seq_times)},
                "join_4_clients": {"p50_ms": ms(pct(conc_times, 0.5)),
                                   "p99_ms": ms(pct(conc_times, 0.99)), "n": len(conc_times),
                                   "per_s": round(len(conc_times) / conc_wall, 1)},
                "dir_cpu_per_join_ms": ms(join_cpu), "dir_cpu_per_remove_ms": ms(remove_cpu),
                "remove_p50_ms": ms(pct(rem_times, 0.5)),
                "watch": {"watchers": watchers, "poll_s": POLL, "rounds": spread,
                          "last_median_s": statistics.median(
                              [s["last_s"] for s in spread if s["last_s"] is not None] or [0])},
                "server_rss_kib": server_rss, "synthetic": len(certs)}
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--joins", type=int, default=100)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--watchers", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--member-only", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.member_only is not None:
        member_side(args.member_only, args.changes)
        return 0
    import signal
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))    # stop the server on a kill too
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        d = asyncio.run(directory_side(n, args.joins, args.watchers, args.rounds))
        m = member_side_subprocess(n, args.changes)
        rows.append({"directory": d, "member": m})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    print("`.venv/bin/python bench/network_scale.py %s`" % " ".join(sys.argv[1:] if argv is None
                                                                     else argv))
    print("%s; %d cores; load average %.2f before, %.2f after\n"
          % (started, os.cpu_count(), load0[0], load1[0]))
    print("| N | join p50 / p99 (1 client) | join p50 / p99 (4 clients), joins/s | "
          "directory CPU per join / per removal | member CPU per change: add / remove / "
          "endpoints (median, p99) | member RSS (N known) | change -> %d watchers (median "
          "of %d; poll 1 s) |" % (args.watchers, args.rounds))
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d, m = r["directory"], r["member"]
        print("| %d | %.1f / %.1f ms | %.1f / %.1f ms, %.0f/s | %.2f / %.2f ms | "
              "%.0f/%.0f, %.0f/%.0f, %.0f/%.0f us | %.0f MiB (%.0f MiB before) | %.2f s |"
              % (d["members"], d["join_seq"]["p50_ms"], d["join_seq"]["p99_ms"],
                 d["join_4_clients"]["p50_ms"], d["join_4_clients"]["p99_ms"],
                 d["join_4_clients"]["per_s"], d["dir_cpu_per_join_ms"],
                 d["dir_cpu_per_remove_ms"], m["add"]["median_us"], m["add"]["p99_us"],
                 m["remove"]["median_us"], m["remove"]["p99_us"], m["endpoints"]["median_us"],
                 m["endpoints"]["p99_us"], m["rss_kib"] / 1024, m["rss_before_kib"] / 1024,
                 d["watch"]["last_median_s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": started, "load_average": [load0, load1], "rows": rows}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
