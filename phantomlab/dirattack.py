"""Attackers and a legitimate watcher for tests/e2e/directory/test_attacks_directory.py.

Run inside a test's network namespace
(``host.run([sys.executable, "-m", "phantomlab.dirattack", ...])``);
each prints one JSON line with what it saw and exits, except ``hog``, which holds
its streams until it is killed.  Every client here is an ordinary HTTP client of
the directory: it sends what anyone on the network could send.

  flood URL N                   publish N records of fresh keys (every other one a
                                revocation with expires=1), serially: the answers
  junk-endorse URL KEY NAME N EXPIRES
                                N endorsements of (KEY, NAME) by throwaway signers
  hog URL KEY N SECONDS         open N watch streams of KEY, hold them SECONDS
                                (while changing other keys now and then)
  watch URL KEYFILE NAME SECONDS
                                watch our own key for SECONDS; after 2 s publish a
                                new endpoint for it: the lines seen, with times
  follow URL KEY SECONDS        DirectoryClient.watch of KEY (polling 0.5 s when
                                refused): the endpoints it was told of
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

from phantom import crypto
from phantom import directory as d


def newsigner() -> d.NodeSigner:
    return d.NodeSigner(bytearray(crypto.x25519_private()))


async def flood(url: str, n: int) -> dict:
    codes, retry_after = [], []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            signer = newsigner()
            revoked = i % 2 == 1
            doc = d.make_record(signer, "flood%d" % i, [] if revoked else ["192.0.2.1:9000"],
                                [], d.MAX_SEQ if revoked else 1,
                                1 if revoked else int(time.time()) + 30 * 86400,
                                revoked=revoked)
            async with s.put(url + "/records/" + d.b64url(signer.public_key),
                             data=d.canonical(doc),
                             headers={"Content-Type": "application/json"}) as r:
                codes.append(r.status)
                if r.status == 429:
                    retry_after.append(r.headers.get("Retry-After"))
                await r.read()
    return {"codes": codes, "retry_after": retry_after}


async def junk_endorse(url: str, key: str, name: str, n: int, expires: int) -> dict:
    codes, errors = [], []
    pub = d.key_from_text(key)
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            end = d.make_endorsement(newsigner(), pub, name, expires)
            async with s.post(url + "/records/%s/endorsements" % d.b64url(pub),
                              data=d.canonical(end),
                              headers={"Content-Type": "application/json"}) as r:
                codes.append(r.status)
                body = await r.json()
                if r.status != 200:
                    errors.append(body.get("error"))
    return {"codes": codes, "errors": errors[:3]}


async def hog(url: str, key: str, n: int, seconds: float) -> None:
    body = {"keys": [key]}
    s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    held, codes = [], []
    for _ in range(n):
        try:
            r = await s.post(url + "/watch", json=body)
        except aiohttp.ClientError as exc:
            codes.append(str(exc.__class__.__name__))
            continue
        codes.append(r.status)
        if r.status == 200:
            held.append(r)
        else:
            r.release()
    print(json.dumps({"codes": {str(c): codes.count(c) for c in set(codes)},
                      "held": len(held)}), flush=True)
    # a busy directory meanwhile: other keys change now and then
    signers = [newsigner() for _ in range(8)]
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        signer = signers[i % len(signers)]
        doc = d.make_record(signer, "busy%d" % (i % len(signers)), ["192.0.2.7:%d" % (1000 + i)],
                            [], int(time.time() * 1000), int(time.time()) + 600)
        async with s.put(url + "/records/" + d.b64url(signer.public_key), data=d.canonical(doc),
                         headers={"Content-Type": "application/json"}) as r:
            await r.read()
        i += 1
        await asyncio.sleep(0.3)
    await s.close()


async def watch(url: str, keyfile: str, name: str, seconds: float) -> dict:
    from phantom.control.keys import load_private_key
    key = load_private_key(keyfile)
    lines, status = [], None
    async with d.DirectoryClient(url, key) as owner, aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.post(url + "/watch", json={"keys": [d.b64(owner.public_key)]},
                          timeout=aiohttp.ClientTimeout(total=seconds + 10)) as r:
            status = r.status

            async def read():
                while True:
                    line = await r.content.readline()
                    if not line:
                        return
                    lines.append((round(time.monotonic() - t0, 2), json.loads(line)))

            reader = asyncio.ensure_future(read())
            await asyncio.sleep(2.0)
            await owner.publish(name, ["192.0.2.99:9000"], [], 600)
            await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t0)))
            reader.cancel()
        owner.wipe()
    return {"status": status, "lines": [(t, doc.get("endpoints") if doc else {})
                                        for t, doc in lines]}


async def follow(url: str, key: str, seconds: float) -> dict:
    seen = []
    async with d.DirectoryClient(url, poll=0.5) as c:
        task = asyncio.ensure_future(c.watch([d.key_from_text(key)], lambda rec: seen.append(
            ["%s:%d" % e for e in rec.endpoints])))
        await asyncio.sleep(seconds)
        task.cancel()
        stats = dict(c.stats)
    return {"seen": seen, "stats": stats}


def main(argv) -> int:
    cmd, url = argv[0], argv[1]
    if cmd == "flood":
        out = asyncio.run(flood(url, int(argv[2])))
    elif cmd == "junk-endorse":
        out = asyncio.run(junk_endorse(url, argv[2], argv[3], int(argv[4]), int(argv[5])))
    elif cmd == "hog":
        asyncio.run(hog(url, argv[2], int(argv[3]), float(argv[4])))
        return 0
    elif cmd == "watch":
        out = asyncio.run(watch(url, argv[2], argv[3], float(argv[4])))
    elif cmd == "follow":
        out = asyncio.run(follow(url, argv[2], float(argv[3])))
    else:
        print("unknown command %r" % cmd, file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
