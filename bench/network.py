"""Networks at scale, sans-IO (issue 20): the member set and the join
transaction with N members, synthetic keys, real Ed25519 signatures.

    .venv/bin/python bench/network.py --sizes 100,1000,10000 [--changes 200] [--json out.json]

For each N it reports, on a member (phantom.network.MemberSet):
* the cost of one change once N members are known -- a new member, a
  removal, an endpoint update -- as the median and p99 wall time and the
  number of members re-evaluated (the rule: flat in N, never the whole list);
* the memory the member set holds (tracemalloc, bytes per member) and the
  process's RSS afterwards;
and on the authority (phantom.network.join on a MemoryLedger, the in-memory
ledger of `phantom network`): the join transaction's median and p99 time
(request verification, invite, allocation, signing, recording).
Nothing here is asserted; see bench/README.md for the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nacl.bindings  # noqa: E402
from nacl.signing import SigningKey as _Ed  # noqa: E402

from phantom import crypto  # noqa: E402
from phantom.network import (MemberSet, SigningKey, allocate, create_invite,  # noqa: E402
                             issue_certificate, make_definition, make_removal)
from phantom.network import join as J  # noqa: E402
from phantom.network.canonical import b64  # noqa: E402

NOW = 1_800_000_000
DAY = 86400


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def network(prefix="100.64.0.0/16"):
    authority = SigningKey(bytes(range(32)))
    admission = SigningKey(bytes(range(32, 64)))
    defn = make_definition(authority, "bench", NOW - DAY, ipv4=prefix,
                           ipv6="fd00:1:2::/48", directory=["https://dir.example.com"],
                           admission=[(admission.public, NOW + 365 * DAY)])
    return defn, admission


def certificates(defn, admission, n, start=0):
    taken4, taken6, out = set(), set(), []
    for i in range(start, start + n):
        key = crypto.x25519_public(crypto.random_bytes(32))
        v4, v6 = allocate(defn, taken4, taken6) if not out else (None, None)
        if out:                                       # allocation is O(taken): step by hand
            v4 = out[-1].ipv4 + 1
            v6 = out[-1].ipv6 + 1
        taken4.add(v4)
        taken6.add(v6)
        out.append(issue_certificate(defn, admission, key=key, name="m%d" % i, ipv4=v4,
                                     ipv6=v6, serial=i + 1, now=NOW - 60,
                                     groups=["g%d" % (i % 10)]))
    return out


def member_side(n, changes):
    defn, admission = network()
    certs = certificates(defn, admission, n + changes)
    base, extra = certs[:n], certs[n:]
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    ms = MemberSet(defn, lambda: NOW)
    t0 = time.perf_counter()
    for seq, c in enumerate(base, 1):
        ms.apply({"seq": seq, "op": "member", "cert": c.doc})
    load = time.perf_counter() - t0
    held = tracemalloc.get_traced_memory()[0] - m0
    tracemalloc.stop()
    seq = n
    result = {"members": n, "load_s": round(load, 3),
              "bytes_per_member": round(held / max(n, 1)), "rss_kib": rss_kib()}
    for kind in ("add", "remove", "endpoints"):
        times, evals = [], []
        for i in range(changes):
            seq += 1
            if kind == "add":
                event = {"seq": seq, "op": "member", "cert": extra[i].doc}
            elif kind == "remove":
                event = {"seq": seq, "op": "removed", "removal": make_removal(
                    defn, admission, base[i * (n // changes or 1) % n].key, NOW).doc}
            else:
                event = {"seq": seq, "op": "endpoints", "key": b64(base[-1 - i % n].key),
                         "endpoints": ["192.0.2.%d:51820" % (i % 250 + 1)]}
            before = ms.stats["evaluated"]
            t0 = time.perf_counter()
            ms.apply(event)
            times.append(time.perf_counter() - t0)
            evals.append(ms.stats["evaluated"] - before)
        result[kind] = {"median_us": round(statistics.median(times) * 1e6, 1),
                        "p99_us": round(pct(times, 0.99) * 1e6, 1),
                        "max_evaluated": max(evals)}
    return result


def authority_side(n, joins):
    defn, admission = network("100.64.0.0/12")
    ledger = J.MemoryLedger()
    for c in certificates(defn, admission, n):
        ledger.save_member(J.MemberRecord(c, ""))
    ledger.serial = n
    token, record = create_invite(defn, NOW, uses=joins, ttl=DAY)
    J.add_invite(ledger, record)
    times = []
    for i in range(joins):
        sk = _Ed(crypto.random_bytes(32))
        ed = bytes(sk.verify_key)
        key = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed)
        req = J.make_join_request(token, key, ed, lambda m, sk=sk: sk.sign(m).signature, NOW,
                                  name="j%d" % i)
        t0 = time.perf_counter()
        J.join(ledger, defn, admission, req, NOW)
        times.append(time.perf_counter() - t0)
    return {"members": n, "join_median_ms": round(statistics.median(times) * 1e3, 2),
            "join_p99_ms": round(pct(times, 0.99) * 1e3, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        row = {"member": member_side(n, args.changes),
               "authority": authority_side(n, args.changes)}
        rows.append(row)
        m, a = row["member"], row["authority"]
        print("N=%-6d member: add %s us (p99 %s, evaluated <= %d), remove %s us (p99 %s, <= %d),"
              " endpoints %s us (p99 %s, <= %d); %d B/member, RSS %d MiB; authority: join %s ms "
              "(p99 %s)" % (n, m["add"]["median_us"], m["add"]["p99_us"],
                            m["add"]["max_evaluated"], m["remove"]["median_us"],
                            m["remove"]["p99_us"], m["remove"]["max_evaluated"],
                            m["endpoints"]["median_us"], m["endpoints"]["p99_us"],
                            m["endpoints"]["max_evaluated"], m["bytes_per_member"],
                            m["rss_kib"] // 1024, a["join_median_ms"], a["join_p99_ms"]),
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
