"""The key directory: signatures and their binding, the server, the client, the CLI.

The server runs in-process on a real localhost socket (port 0); a tiny
"malicious directory" (tests' own aiohttp app) serves tampered records to
check that the client verifies everything.  The netns test that runs
``phantom directory serve`` in namespace a and the CLI client in namespace b
is tests/e2e/directory/test_directory_netns.py.
"""

from __future__ import annotations

import functools
import asyncio
import base64
import contextlib
import json
import logging

import pytest
from aiohttp import web
from nacl.signing import VerifyKey

from phantom import crypto
from phantom import directory as d
from phantom.directory.server import Limits
from phantom.control.keys import write_private_key
from tests.support.clock import Clock as _Clock

Clock = functools.partial(_Clock, 1_700_000_000.0)

pytestmark = pytest.mark.timeout(60)


# --- helpers ------------------------------------------------------------------------------------
def run(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def newkey() -> bytearray:
    return bytearray(crypto.x25519_private())


@contextlib.asynccontextmanager
async def directory(clock, trusted=(), max_ttl=d.DEFAULT_MAX_TTL, store=None, limits=None):
    store = store or d.DirectoryStore(":memory:")
    app = d.create_app(store, clock=clock, trusted_signers=trusted, max_ttl=max_ttl,
                       limits=limits)
    runner = await d.start_server(app, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    try:
        yield "http://127.0.0.1:%d" % port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def malicious_directory(by_key: dict, by_name: dict):
    """A directory that answers with whatever documents the test planted."""
    async def get_key(request):
        doc = by_key.get(request.match_info["k"])
        return web.json_response(doc) if doc is not None else web.json_response(
            {"error": "no"}, status=404)

    async def get_name(request):
        doc = by_name.get(request.match_info["n"])
        return web.json_response(doc) if doc is not None else web.json_response(
            {"error": "no"}, status=404)

    app = web.Application()
    app.router.add_get("/records/{k}", get_key)
    app.router.add_get("/names/{n}", get_name)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield "http://127.0.0.1:%d" % runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def raw(url: str, method: str, path: str, body: bytes | None = None, headers=None):
    """One request with the body bytes exactly as given; returns (status, parsed JSON)."""
    import aiohttp
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url + path, data=body, headers=headers or {}) as resp:
            text = await resp.text()
            assert resp.content_type == "application/json", text
            return resp.status, json.loads(text)


def record_for(key, clock, name="alice", seq=1, ttl=600, endpoints=("192.0.2.1:9000",),
               allowed=("10.9.0.1/32",), revoked=False) -> dict:
    signer = d.NodeSigner(key)
    try:
        return d.make_record(signer, name, endpoints, allowed, seq, int(clock()) + ttl, revoked)
    finally:
        signer.wipe()


def resign(doc: dict, key) -> dict:
    """Re-sign a modified document with ``key`` (and claim ``key``'s signing key)."""
    signer = d.NodeSigner(key)
    try:
        out = dict(doc, signing_key=d.b64(signer.signing_key))
        out["sig"] = d.b64(signer.sign(d.record_signed_bytes(out)))
        return out
    finally:
        signer.wipe()


# --- the signature scheme ---------------------------------------------------------------------------
def test_signing_key_is_bound_to_the_x25519_key_and_signs_plain_ed25519():
    for _ in range(64):
        k = newkey()
        signer = d.NodeSigner(k)
        assert signer.public_key == crypto.x25519_public(bytes(k))
        assert d.verify_binding(signer.public_key, signer.signing_key)
        msg = crypto.random_bytes(40)
        sig = signer.sign(msg)
        VerifyKey(signer.signing_key).verify(msg, sig)          # standard Ed25519 verification
        assert d.verify_signature(signer.signing_key, msg, sig)
        assert not d.verify_signature(signer.signing_key, msg + b"x", sig)
        other = d.NodeSigner(newkey())
        assert not d.verify_binding(signer.public_key, other.signing_key)
        assert not d.verify_binding(other.public_key, signer.signing_key)
        other.wipe()
        signer.wipe()
    # small-order / identity keys never bind
    assert not d.verify_binding(crypto.x25519_public(bytes(newkey())), bytes([1]) + bytes(31))
    assert not d.verify_binding(bytes(32), bytes(32))


def test_signatures_are_hedged_and_wiped_signer_refuses():
    signer = d.NodeSigner(newkey())
    a, b = signer.sign(b"m"), signer.sign(b"m")
    assert a != b and d.verify_signature(signer.signing_key, b"m", a) and \
        d.verify_signature(signer.signing_key, b"m", b)
    signer.wipe()
    with pytest.raises(crypto.CryptoError):
        signer.sign(b"m")


def test_record_round_trip_and_every_tamper_is_detected():
    clock, k = Clock(), newkey()
    doc = record_for(k, clock, endpoints=("192.0.2.1:9000", "[2001:db8::1]:9000"),
                     allowed=("10.9.0.1/32", "fd09::1/128"))
    rec = d.parse_record(doc, clock())
    assert rec.public_key == crypto.x25519_public(bytes(k))
    assert rec.endpoints == (("192.0.2.1", 9000), ("2001:db8::1", 9000))
    assert [str(n) for n in rec.allowed_ips] == ["10.9.0.1/32", "fd09::1/128"]
    assert rec.endorsed_by == frozenset() and not rec.revoked
    tampers = [("endpoints", ["198.51.100.7:9000"]), ("allowed_ips", ["0.0.0.0/0"]),
               ("seq", 2), ("expires", doc["expires"] + 1), ("revoked", True), ("name", "mallory"),
               ("public_key", d.b64(crypto.x25519_public(bytes(newkey()))))]
    for field, value in tampers:
        with pytest.raises(d.RecordError):
            d.parse_record(dict(doc, **{field: value}), clock())
    # the attacker re-signs with its own key and claims its own signing key: binding fails
    with pytest.raises(d.RecordError, match="forged"):
        d.parse_record(resign(dict(doc, endpoints=["198.51.100.7:9000"]), newkey()), clock())
    # unsigned fields may change without breaking the signature; they are checked on their own
    assert d.parse_record(dict(doc, endorsements=[]), clock()).name == "alice"


def test_record_shape_is_strict():
    clock, k = Clock(), newkey()
    doc = record_for(k, clock)
    bad = [dict(doc, extra=1), {x: y for x, y in doc.items() if x != "seq"},
           dict(doc, seq=True), dict(doc, seq=-1), dict(doc, seq=2 ** 63),
           dict(doc, endpoints=["192.0.2.1:09000"]), dict(doc, endpoints=["host:1"]),
           dict(doc, allowed_ips=["10.9.0.1/24"]), dict(doc, endpoints="192.0.2.1:9000"),
           dict(doc, public_key=doc["public_key"].rstrip("=")), dict(doc, sig="AAAA"),
           dict(doc, revoked=1), dict(doc, name="-x"), dict(doc, endpoints=["0.0.0.0:1"]),
           dict(doc, endpoints=["192.0.2.1:1"] * (d.MAX_ENDPOINTS + 1)), [], "x"]
    for b in bad:
        with pytest.raises(d.RecordError):
            d.parse_record(b, clock())
    # the server is strict about endorsements; clients skip bad ones
    with_bad = dict(doc, endorsements=[{"signer": doc["signing_key"]}])
    assert d.parse_record(with_bad, clock()).endorsed_by == frozenset()
    with pytest.raises(d.RecordError):
        d.parse_record(with_bad, clock(), strict_endorsements=True)
    with pytest.raises(d.RecordError, match="expired"):
        d.parse_record(doc, doc["expires"])
    with pytest.raises(ValueError, match="duplicate"):
        d.strict_loads(b'{"a": 1, "a": 2}')
    with pytest.raises(ValueError, match="integers"):
        d.strict_loads(b'{"a": 1.5}')
    with pytest.raises(ValueError):
        d.strict_loads(b'{"a": NaN}')
    with pytest.raises(ValueError):
        d.strict_loads(b"[" * 100000)


# --- server and client --------------------------------------------------------------------------------
def test_publish_update_and_lookup_by_name_and_key():
    clock = Clock()

    async def main():
        async with directory(clock) as url:
            alice_key, bob_key = newkey(), newkey()
            async with d.DirectoryClient(url, alice_key, clock) as alice, \
                    d.DirectoryClient(url, bob_key, clock) as bob:
                stored = await alice.publish("alice", ["192.0.2.1:9000"], ["10.9.0.1/32"], 600)
                assert stored["name"] == "alice" and stored["seq"] == int(clock() * 1000)
                rec = await bob.resolve_name("alice")
                assert rec is not None and rec.public_key == alice.public_key
                assert rec.endpoints == (("192.0.2.1", 9000),)
                assert rec2 if (rec2 := await bob.resolve_key(alice.public_key)) else False
                # update: a newer seq wins
                clock.t += 60
                await alice.publish("alice", [("192.0.2.99", 9100)], ["10.9.0.1/32"], 600)
                clock.t += d.CACHE_REFRESH + 1
                rec = await bob.resolve_key(alice.public_key)
                assert rec.endpoints == (("192.0.2.99", 9100),)
                assert (await bob.resolve_name("alice")).endpoints == (("192.0.2.99", 9100),)
                assert await bob.resolve_name("nobody") is None
                assert await bob.resolve_key(crypto.x25519_public(bytes(newkey()))) is None
                listed = await bob.list_records()
                assert [r.name for r in listed] == ["alice"]
                # a second key cannot take a live name
                with pytest.raises(d.DirectoryRejected) as err:
                    await bob.publish("alice", ["192.0.2.2:9000"], [], 600)
                assert err.value.status == 409
            status, body = await raw(url, "GET", "/status")
            assert status == 200 and body["records"] == 1
    run(main())


def test_stale_seq_refused_and_identical_republish_is_idempotent():
    clock, k = Clock(), newkey()

    async def main():
        async with directory(clock) as url:
            path = "/records/" + d.b64url(crypto.x25519_public(bytes(k)))
            newer = record_for(k, clock, seq=10)
            status, _ = await raw(url, "PUT", path, d.canonical(newer))
            assert status == 201
            assert (await raw(url, "PUT", path, d.canonical(newer)))[0] == 200
            for seq in (9, 10):
                status, body = await raw(url, "PUT", path, d.canonical(record_for(k, clock, seq=seq)))
                assert status == 409 and "stale seq" in body["error"]
            status, body = await raw(url, "GET", path)
            assert status == 200 and body["seq"] == 10
    run(main())


def test_publish_recovers_when_the_directory_holds_a_newer_seq():
    clock, k = Clock(), newkey()

    async def main():
        async with directory(clock) as url:
            path = "/records/" + d.b64url(crypto.x25519_public(bytes(k)))
            future_seq = int(clock() * 1000) + 10 ** 6       # a clock that ran ahead earlier
            assert (await raw(url, "PUT", path, d.canonical(
                record_for(k, clock, seq=future_seq))))[0] == 201
            async with d.DirectoryClient(url, k, clock) as c:
                stored = await c.publish("alice", ["192.0.2.1:9000"], [], 600)
            assert stored["seq"] == future_seq + 1
    run(main())


def test_expired_records_refused_and_dropped():
    clock, k = Clock(), newkey()

    async def main():
        async with directory(clock, max_ttl=3600) as url:
            path = "/records/" + d.b64url(crypto.x25519_public(bytes(k)))
            status, body = await raw(url, "PUT", path, d.canonical(record_for(k, clock, ttl=-1)))
            assert status == 400 and "expired" in body["error"]
            status, body = await raw(url, "PUT", path, d.canonical(record_for(k, clock, ttl=10 ** 6)))
            assert status == 400 and "too long" in body["error"]
            assert (await raw(url, "PUT", path, d.canonical(record_for(k, clock, ttl=100))))[0] == 201
            async with d.DirectoryClient(url, None, clock) as c:
                assert await c.resolve_name("alice") is not None
                clock.t += 101
                assert (await raw(url, "GET", path))[0] == 404
                assert (await raw(url, "GET", "/names/alice"))[0] == 404
                assert await c.resolve_key(crypto.x25519_public(bytes(k))) is None
    run(main())


def test_revocation_is_signed_final_and_seen_by_clients():
    clock = Clock()

    async def main():
        async with directory(clock) as url:
            k = newkey()
            async with d.DirectoryClient(url, k, clock) as owner, \
                    d.DirectoryClient(url, None, clock) as reader:
                await owner.publish("alice", ["192.0.2.1:9000"], [], 600)
                assert await reader.resolve_name("alice") is not None
                # someone else cannot revoke alice: the revocation must be signed by her key
                path = "/records/" + d.b64url(owner.public_key)
                forged = resign(record_for(k, clock, seq=d.MAX_SEQ, revoked=True), newkey())
                status, _ = await raw(url, "PUT", path, d.canonical(forged))
                assert status == 403
                doc = await owner.revoke()
                assert doc["revoked"] is True and doc["name"] == "alice"
                clock.t += d.CACHE_REFRESH + 1
                assert await reader.resolve_key(owner.public_key) is None
                assert reader.is_revoked(owner.public_key)
                assert await reader.resolve_name("alice") is None
                with pytest.raises(d.DirectoryRejected) as err:
                    await owner.publish("alice", ["192.0.2.1:9000"], [], 600)
                assert err.value.status == 410
                # the revocation outlives its own expiry; the name is free for a new key
                clock.t += d.REVOCATION_TTL + 10
                assert (await raw(url, "GET", path))[1]["revoked"] is True
                async with d.DirectoryClient(url, newkey(), clock) as newcomer:
                    await newcomer.publish("alice", ["192.0.2.5:9000"], [], 600)
                    rec = await reader.resolve_name("alice")
                    assert rec is not None and rec.public_key == newcomer.public_key
    run(main())


def test_server_rejects_records_signed_by_the_wrong_key():
    clock = Clock()

    async def main():
        async with directory(clock) as url:
            victim, attacker = newkey(), newkey()
            victim_pub = crypto.x25519_public(bytes(victim))
            path = "/records/" + d.b64url(victim_pub)
            genuine = record_for(victim, clock)
            # 1. the attacker's own signing key attached to the victim's public key
            forged = resign(dict(genuine, endpoints=["198.51.100.66:9000"]), attacker)
            status, body = await raw(url, "PUT", path, d.canonical(forged))
            assert status == 403 and "forged" in body["error"]
            # 2. the victim's signing key, the attacker's signature
            sig = d.NodeSigner(attacker).sign(d.record_signed_bytes(genuine))
            status, body = await raw(url, "PUT", path, d.canonical(dict(genuine, sig=d.b64(sig))))
            assert status == 403 and "signature" in body["error"]
            # 3. a genuine record with one field changed
            status, _ = await raw(url, "PUT", path, d.canonical(dict(genuine, seq=2)))
            assert status == 403
            # 4. a genuine record put under another key's path
            other = "/records/" + d.b64url(crypto.x25519_public(bytes(attacker)))
            status, body = await raw(url, "PUT", other, d.canonical(genuine))
            assert status == 400 and "differs" in body["error"]
            assert (await raw(url, "GET", path))[0] == 404
            assert (await raw(url, "GET", "/records"))[1]["records"] == []
    run(main())


def test_client_rejects_forged_records_from_a_malicious_directory(caplog):
    clock = Clock()
    victim, attacker = newkey(), newkey()
    victim_pub = crypto.x25519_public(bytes(victim))
    genuine = record_for(victim, clock, name="alice")
    tampered = dict(genuine, endpoints=["198.51.100.66:9000"])
    substituted = resign(tampered, attacker)            # attacker's signing key, valid signature
    squatter = record_for(attacker, clock, name="alice", endpoints=("198.51.100.66:9000",))
    cases = [tampered, substituted, squatter,
             record_for(victim, clock, name="bob")]     # genuine, but for another name

    async def main():
        for i, doc in enumerate(cases):
            async with malicious_directory({d.b64url(victim_pub): doc},
                                           {"alice": doc}) as url:
                async with d.DirectoryClient(url, None, clock) as c:
                    by_key = await c.resolve_key(victim_pub)
                    if i == 2:
                        assert by_key is None                  # another key's record
                    elif i == 3:
                        assert by_key is not None              # genuine record of the victim
                        assert await c.resolve_name("alice") is None    # but not named alice
                        continue
                    else:
                        assert by_key is None
                    if i != 2:
                        assert await c.resolve_name("alice") is None
                    assert c.stats["rejected"] >= 1
        # a squatter's validly self-signed claim on a pinned name is refused (TOFU)
        async with malicious_directory({}, {"alice": squatter}) as url:
            async with d.DirectoryClient(url, None, clock) as c:
                c.pin("alice", victim_pub)
                assert await c.resolve_name("alice") is None
                assert c.stats["pin_refused"] == 1
        # a rolled-back record (older seq) does not replace a newer one already seen
        newer = record_for(victim, clock, seq=5, endpoints=("192.0.2.5:9000",))
        older = record_for(victim, clock, seq=4, endpoints=("192.0.2.4:9000",))
        served = {d.b64url(victim_pub): newer}
        async with malicious_directory(served, {}) as url:
            async with d.DirectoryClient(url, None, clock) as c:
                assert (await c.resolve_key(victim_pub)).seq == 5
                served[d.b64url(victim_pub)] = older
                clock.t += d.CACHE_REFRESH + 1
                assert (await c.resolve_key(victim_pub)).seq == 5

    with caplog.at_level(logging.WARNING, logger="phantom.directory"):
        run(main())
    assert "rejected the record" in caplog.text


def test_endorsements_by_trusted_signers_count_and_others_are_ignored():
    clock = Clock()

    async def main():
        ca_key, rogue_key, alice_key = newkey(), newkey(), newkey()
        ca, rogue = d.signing_key_of(ca_key), d.signing_key_of(rogue_key)
        async with directory(clock) as url:           # keeps any valid endorsement
            async with d.DirectoryClient(url, alice_key, clock) as alice, \
                    d.DirectoryClient(url, ca_key, clock) as ca_client, \
                    d.DirectoryClient(url, rogue_key, clock) as rogue_client, \
                    d.DirectoryClient(url, None, clock, trusted_signers=[ca]) as daemon, \
                    d.DirectoryClient(url, None, clock) as untrusting:
                await alice.publish("alice", ["192.0.2.1:9000"], ["10.9.0.1/32"], 600)
                assert not await daemon.is_endorsed(alice.public_key)
                await rogue_client.endorse(alice.public_key, "alice", 3600)
                clock.t += d.CACHE_REFRESH + 1
                assert not await daemon.is_endorsed(alice.public_key)   # rogue is not trusted
                await ca_client.endorse(alice.public_key, "alice", 3600)
                clock.t += d.CACHE_REFRESH + 1
                rec = await daemon.resolve_key(alice.public_key)
                assert rec.endorsed_by == {ca}
                assert len(rec.doc["endorsements"]) == 2
                assert (await untrusting.resolve_key(alice.public_key)).endorsed_by == frozenset()
                # an endorsement for another name is refused, and never counts
                with pytest.raises(d.DirectoryRejected) as err:
                    await _post_endorsement(url, alice.public_key, ca_key, "alicia", clock)
                assert err.value.status == 400
                # endorsements survive an update with the same name, and expire
                await alice.publish("alice", ["192.0.2.2:9000"], ["10.9.0.1/32"], 600)
                clock.t += d.CACHE_REFRESH + 1
                assert (await daemon.resolve_key(alice.public_key)).endorsed_by == {ca}
                clock.t += 3600
                await alice.publish("alice", ["192.0.2.2:9000"], ["10.9.0.1/32"], 600)
                clock.t += d.CACHE_REFRESH + 1
                assert (await daemon.resolve_key(alice.public_key)).endorsed_by == frozenset()
        async with directory(clock, trusted=[ca]) as url:   # keeps only the CA's endorsements
            async with d.DirectoryClient(url, alice_key, clock) as alice, \
                    d.DirectoryClient(url, newkey(), clock) as squatter, \
                    d.DirectoryClient(url, ca_key, clock) as ca_client, \
                    d.DirectoryClient(url, rogue_key, clock) as rogue_client, \
                    d.DirectoryClient(url, None, clock, trusted_signers=[ca]) as daemon:
                await squatter.publish("alice", ["198.51.100.66:9000"], [], 600)
                with pytest.raises(d.DirectoryRejected):
                    await alice.publish("alice", ["192.0.2.1:9000"], [], 600)
                # alice gets the CA's endorsement out of band and publishes with it:
                # an endorsed claim displaces an unendorsed one
                end = d.make_endorsement(d.NodeSigner(ca_key), alice.public_key, "alice",
                                         int(clock()) + 3600)
                doc = record_for(alice_key, clock, seq=int(clock() * 1000))
                doc["endorsements"] = [end]
                status, _ = await raw(url, "PUT", "/records/" + d.b64url(alice.public_key),
                                      d.canonical(doc))
                assert status == 201
                rec = await daemon.resolve_name("alice")
                assert rec.public_key == alice.public_key and rec.endorsed_by == {ca}
                with pytest.raises(d.DirectoryRejected) as err:
                    await rogue_client.endorse(alice.public_key, "alice", 3600)
                assert err.value.status == 403

    run(main())


async def _post_endorsement(url, public_key, signer_key, name, clock):
    end = d.make_endorsement(d.NodeSigner(signer_key), public_key, name, int(clock()) + 3600)
    status, body = await raw(url, "POST", "/records/%s/endorsements" % d.b64url(public_key),
                             d.canonical(end))
    if status != 200:
        raise d.DirectoryRejected(status, body["error"])
    return body


def test_client_ignores_forged_endorsements_but_keeps_the_record():
    clock = Clock()
    alice, ca_key = newkey(), newkey()
    ca = d.signing_key_of(ca_key)
    doc = record_for(alice, clock)
    good = d.make_endorsement(d.NodeSigner(ca_key), crypto.x25519_public(bytes(alice)),
                              "alice", int(clock()) + 60)
    forged = dict(good, expires=good["expires"] + 10 ** 6)    # stretched by the directory
    rec = d.parse_record(dict(doc, endorsements=[forged]), clock(), trusted_signers=[ca])
    assert rec.endorsed_by == frozenset() and rec.name == "alice"
    rec = d.parse_record(dict(doc, endorsements=[good]), clock(), trusted_signers=[ca])
    assert rec.endorsed_by == {ca}
    assert d.parse_record(dict(doc, endorsements=[good]), clock() + 61,
                          trusted_signers=[ca]).endorsed_by == frozenset()
    with pytest.raises(d.RecordError):
        d.parse_record(dict(doc, endorsements=[forged]), clock(), trusted_signers=[ca],
                       strict_endorsements=True)


def test_endorsers_field_is_signed_strict_and_only_those_it_names_count():
    """A record may name who may endorse it (issue 18 item 4): the field is signed, its
    shape is strict, a record without it is what it always was, and an endorsement by
    a signer it does not name never counts, whoever serves it."""
    clock = Clock()
    alice, ca_key, rogue_key = newkey(), newkey(), newkey()
    ca, rogue = d.signing_key_of(ca_key), d.signing_key_of(rogue_key)
    pub = crypto.x25519_public(bytes(alice))
    assert "endorsers" not in record_for(alice, clock)             # old records: unchanged
    signer = d.NodeSigner(alice)
    doc = d.make_record(signer, "alice", ["192.0.2.1:9000"], [], 1, int(clock()) + 600,
                        endorsers=[ca, ca])
    assert doc["endorsers"] == [d.b64(ca)]
    rec = d.parse_record(doc, clock())
    assert rec.endorsers == {ca} and rec.summary()["endorsers"] == [d.b64(ca)]
    # signed: dropping or changing the list breaks the signature
    for tampered in ({k: v for k, v in doc.items() if k != "endorsers"},
                     dict(doc, endorsers=[d.b64(rogue)])):
        with pytest.raises(d.RecordError, match="signature"):
            d.parse_record(tampered, clock())
    two = sorted([d.b64(ca), d.b64(rogue)])
    for bad in ([], "x", [d.b64(ca)] * 2, two[::-1], [d.b64(ca)[:-2]], [1],
                [d.b64(d.signing_key_of(newkey())) for _ in range(d.MAX_ENDORSERS + 1)]):
        with pytest.raises(d.RecordError, match="endorsers"):
            d.parse_record(dict(doc, endorsers=bad), clock())
    with pytest.raises(d.RecordError):
        d.make_record(signer, "alice", [], [], 1, int(clock()) + 600,
                      endorsers=[d.signing_key_of(newkey()) for _ in range(d.MAX_ENDORSERS + 1)])
    # a directory serving another signer's endorsement anyway gains nothing by it
    ends = [d.make_endorsement(d.NodeSigner(k), pub, "alice", int(clock()) + 60)
            for k in (rogue_key, ca_key)]
    for trusted in (None, [ca, rogue]):
        rec = d.parse_record(dict(doc, endorsements=ends), clock(), trusted_signers=trusted,
                             strict_endorsements=True)
        assert rec.endorsed_by == {ca}
    assert d.parse_record(dict(doc, endorsements=ends[:1]), clock(),
                          trusted_signers=[rogue]).endorsed_by == frozenset()

    async def main():
        async with directory(clock) as url:           # no --trusted-signer
            async with d.DirectoryClient(url, alice, clock) as owner, \
                    d.DirectoryClient(url, ca_key, clock) as ca_client, \
                    d.DirectoryClient(url, rogue_key, clock) as rogue_client, \
                    d.DirectoryClient(url, None, clock, trusted_signers=[ca]) as daemon:
                stored = await owner.publish("alice", ["192.0.2.1:9000"], [], 600,
                                             endorsers=[ca])
                assert stored["endorsers"] == [d.b64(ca)]
                with pytest.raises(d.DirectoryRejected) as err:
                    await rogue_client.endorse(pub, "alice", 3600)
                assert err.value.status == 403 and "endorsers" in err.value.message
                await ca_client.endorse(pub, "alice", 3600)
                assert (await daemon.resolve_key(pub, fresh=True)).endorsed_by == {ca}
    run(main())


def test_cache_serves_while_the_directory_is_down(caplog):
    clock = Clock()

    async def main():
        k = newkey()
        async with directory(clock) as url:
            async with d.DirectoryClient(url, k, clock) as owner:
                await owner.publish("alice", ["192.0.2.1:9000"], [], 3 * 3600)
            reader = d.DirectoryClient(url, None, clock, cache_ttl=600)
            rec = await reader.resolve_name("alice")
            unknown = crypto.x25519_public(bytes(newkey()))
        # the directory is gone now
        try:
            clock.t += d.CACHE_REFRESH + 1
            with caplog.at_level(logging.WARNING, logger="phantom.directory"):
                again = await reader.resolve_name("alice")
                by_key = await reader.resolve_key(rec.public_key)
            assert again == rec and by_key == rec
            assert reader.stats["stale_served"] == 2
            assert "serving the cached record" in caplog.text and "unreachable" in caplog.text
            with pytest.raises(d.DirectoryUnavailable):
                await reader.resolve_key(unknown)
            assert not await reader.is_endorsed(unknown)
            clock.t += 600
            with pytest.raises(d.DirectoryUnavailable):
                await reader.resolve_name("alice")
        finally:
            await reader.close()
    run(main())


def test_store_persists_and_purges_expired_but_keeps_revocations(tmp_path):
    clock = Clock()
    db = tmp_path / "dir.sqlite"

    async def main():
        a, b = newkey(), newkey()
        store = d.DirectoryStore(db)
        async with directory(clock, store=store) as url:
            async with d.DirectoryClient(url, a, clock) as ca, d.DirectoryClient(url, b, clock) as cb:
                await ca.publish("alice", ["192.0.2.1:9000"], [], 100)
                await cb.publish("bob", ["192.0.2.2:9000"], [], 100)
                await cb.revoke()
        await store.close()
        store = d.DirectoryStore(db)
        assert await store.count() == 2
        assert await store.purge(int(clock()) + 101) == 1
        assert [r.name for r in await store.list(int(clock()) + 101)] == ["bob"]
        assert (await store.get(d.b64(crypto.x25519_public(bytes(b))))).revoked
        await store.close()
    run(main())


def test_bad_input_gets_4xx_json_never_5xx():
    clock, k = Clock(), newkey()
    genuine = record_for(k, clock)
    path = "/records/" + d.b64url(crypto.x25519_public(bytes(k)))

    async def main():
        # hundreds of requests from one address: the per-source limits would answer
        # 429 (tests/unit/directory/test_directory_limits.py checks those); here every answer counts
        async with directory(clock, limits=Limits.unlimited()) as url:
            cases = [
                ("PUT", path, b"{not json", 400), ("PUT", path, b"", 400),
                ("PUT", path, b"[]", 400), ("PUT", path, b'"x"', 400),
                ("PUT", path, b"\xff\xfe", 400), ("PUT", path, b'{"a": 1, "a": 1}', 400),
                ("PUT", path, b"[" * 5000 + b"]" * 5000, 400),
                ("PUT", path, b'{"seq": 1e400}', 400),
                ("PUT", path, b"x" * (d.MAX_BODY + 1), 413),
                ("PUT", "/records/notakey", d.canonical(genuine), 400),
                ("PUT", "/records/" + "A" * 43 + "=", d.canonical(genuine), 400),
                ("GET", "/records/%21%21", None, 400), ("GET", "/names/-bad", None, 400),
                ("GET", "/names/" + "a" * 65, None, 400), ("GET", "/nope", None, 404),
                ("DELETE", path, None, 405), ("POST", path + "/endorsements", b"{}", 404),
                ("GET", "/records?limit=0", None, 400), ("GET", "/records?limit=x", None, 400),
                ("GET", "/records?after=zzz", None, 400),
            ]
            for method, p, body, want in cases:
                status, payload = await raw(url, method, p, body)
                assert status == want, (method, p, body and body[:40], status, payload)
                assert isinstance(payload.get("error"), str)
            # every field removed, and every field replaced by a wrong type: all 4xx
            for field in genuine:
                removed = {x: y for x, y in genuine.items() if x != field}
                for doc in ([removed] if field != "endorsements" else []) + [
                            dict(genuine, **{field: None}), dict(genuine, **{field: [1]}),
                            dict(genuine, **{field: {"x": 1}}), dict(genuine, **{field: 2 ** 70})]:
                    status, payload = await raw(url, "PUT", path, json.dumps(doc).encode())
                    assert 400 <= status < 500, (field, doc, status, payload)

            # a chunked body without Content-Length past the limit: 413, not 5xx
            async def chunks():
                for _ in range(d.MAX_BODY // 1024 + 2):
                    yield b" " * 1024
            status, _ = await raw(url, "PUT", path, chunks())
            assert status == 413
            assert (await raw(url, "PUT", path, d.canonical(genuine)))[0] == 201
    run(main())


def test_keep_published_republishes():
    clock = Clock()

    async def main():
        async with directory(clock) as url:
            async with d.DirectoryClient(url, newkey(), clock) as c:
                task = asyncio.ensure_future(c.keep_published("alice", ["192.0.2.1:9000"], [], 1))
                try:
                    for _ in range(200):
                        await asyncio.sleep(0.01)
                        if c._seq:
                            break
                    first = c._seq
                    clock.t += 1
                    for _ in range(200):
                        await asyncio.sleep(0.01)
                        if c._seq > first:
                            break
                    assert c._seq > first
                finally:
                    task.cancel()
    run(main())


def test_cli_signer_key_and_dispatch(tmp_path, capsys):
    from phantom import cli
    key = write_private_key(tmp_path / "signer.key")
    assert cli.main(["directory", "signer-key", "--private-key", str(tmp_path / "signer.key")]) == 0
    out = capsys.readouterr().out.strip()
    assert base64.b64decode(out) == d.signing_key_of(key)
    assert cli.main(["directory", "lookup", "--directory", "http://127.0.0.1:1",
                     "--timeout", "2", "alice"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_keys_in_paths_accept_url_safe_and_percent_encoded_base64():
    clock = Clock()

    async def main():
        import aiohttp
        import urllib.parse
        import yarl
        async with directory(clock) as url:
            for _ in range(200):                       # a key whose base64 has '/' and '+'
                k = newkey()
                text = d.b64(crypto.x25519_public(bytes(k)))
                if "/" in text and "+" in text:
                    break
            doc = record_for(k, clock)
            assert (await raw(url, "PUT", "/records/" + d.b64url(base64.b64decode(text)),
                              d.canonical(doc)))[0] == 201
            quoted = urllib.parse.quote(text, safe="")
            async with aiohttp.ClientSession() as s:
                async with s.get(yarl.URL(url + "/records/" + quoted, encoded=True)) as r:
                    assert r.status == 200 and (await r.json())["public_key"] == text
    run(main())
