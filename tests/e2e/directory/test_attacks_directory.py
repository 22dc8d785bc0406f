"""Attacks on the key directory, end to end (issue 18 items 4, 5, 7 and 14).

A real ``phantom directory serve`` process runs in namespace c of ``lan3`` (a, b
and c on one bridge, 10.204.0.1-3); the attacker works from b, the legitimate
users from a, each an ordinary HTTP client on the lab network (phantomlab/dirattack.py).
The tests assert what must hold, not how it is enforced:

* a CA's endorsement survives junk endorsements, and a refused endorsement is
  refused (the CLI fails), not answered 200;
* a daemon with trusted signers names them as its record's endorsers, so junk
  sent before the CA endorses is refused (403) and cannot block its admission;
* one source cannot grow the directory past its quota: it gets 429s, and the
  store holds no more than the quota of its records;
* a legitimate watcher is served (its heartbeat and its changes) while one host
  holds as many streams as it can and keeps the directory busy; a client on the
  greedy host that is refused a stream still follows the record (it polls); the
  streams are freed within seconds of the host going away.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from phantom import crypto
from phantom import directory as d
from phantom.control.keys import write_private_key
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import FAST_TUNABLES, UDP_PORT, write_config

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

DIR_PORT = 4568
ATTACK = [sys.executable, "-m", "phantomlab.dirattack"]     # phantomlab/dirattack.py


def cli(host, *args, check=True, timeout=30):
    out = host.run([sys.executable, "-m", "phantom.cli", *args], check=False, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def attack(host, *args, timeout=60) -> dict:
    out = host.run([*ATTACK, *map(str, args)], check=False, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve(daemon_factory, host, tmp_path, *extra):
    return daemon_factory(host, ["directory", "serve", "--listen", host.ip, "--port",
                                 str(DIR_PORT), "--db", str(tmp_path / "dir.sqlite"), *extra],
                          executable=[sys.executable, "-m", "phantom.cli"], http_port=DIR_PORT,
                          http_host=host.ip, name="directory", timeout=20)


def status(host, server_host) -> dict:
    code, body = host.http("GET", "/status", port=DIR_PORT, host=server_host.ip)
    assert code == 200, body
    return body


def new_key(tmp_path, name):
    path = tmp_path / ("%s.key" % name)
    key = write_private_key(path)
    return path, d.b64(crypto.x25519_public(bytes(key)))


def test_a_ca_endorsement_survives_junk_endorsements(lan3, daemon_factory, tmp_path):
    a, b, c = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    url = "http://%s:%d" % (c.ip, DIR_PORT)
    serve(daemon_factory, c, tmp_path)
    owner_file, owner = new_key(tmp_path, "bob")
    ca_file, _ = new_key(tmp_path, "ca")
    ca = cli(a, "directory", "signer-key", "--private-key", str(ca_file)).stdout.strip()
    cli(a, "directory", "publish", "--directory", url, "--private-key", str(owner_file),
        "--name", "bob", "--endpoint", "%s:9000" % a.ip, "--ttl", "3600")
    cli(a, "directory", "endorse", "--directory", url, "--private-key", str(ca_file),
        "--public-key", owner, "--name", "bob", "--ttl", "86400")

    # the reported attack: 16 throwaway signers, expires = 2^62
    out = attack(b, "junk-endorse", url, owner, "bob", 16, 2 ** 62)
    assert out["codes"] == [400] * 16, out
    # and with lifetimes the directory takes: they fill the free places, then are refused
    out = attack(b, "junk-endorse", url, owner, "bob", 20, int(time.time()) + 3600)
    assert out["codes"].count(200) <= d.MAX_ENDORSEMENTS - 1, out
    assert set(out["codes"][d.MAX_ENDORSEMENTS - 1:]) == {409}, out
    # a refused endorsement is refused: the CLI says so and fails
    junk_file, _ = new_key(tmp_path, "junk")
    refused = cli(b, "directory", "endorse", "--directory", url, "--private-key", str(junk_file),
                  "--public-key", owner, "--name", "bob", "--ttl", "3600", check=False)
    assert refused.returncode == 1 and "409" in refused.stderr, refused.stderr

    # whoever trusts the CA still sees bob endorsed by it
    found = json.loads(cli(a, "directory", "lookup", "--directory", url, owner,
                           "--trusted-signer", ca, "--json").stdout)
    assert found["endorsed_by"] == [ca], found
    # the CA can renew its endorsement (its own place), and bob's next record keeps it
    cli(a, "directory", "endorse", "--directory", url, "--private-key", str(ca_file),
        "--public-key", owner, "--name", "bob", "--ttl", "172800")
    cli(a, "directory", "publish", "--directory", url, "--private-key", str(owner_file),
        "--name", "bob", "--endpoint", "%s:9001" % a.ip, "--ttl", "3600")
    found = json.loads(cli(a, "directory", "lookup", "--directory", url, owner,
                           "--trusted-signer", ca, "--json").stdout)
    assert found["endorsed_by"] == [ca] and found["endpoints"] == ["%s:9001" % a.ip], found


def test_junk_endorsements_cannot_block_a_daemons_admission(lan3, daemon_factory, tmp_path):
    """The gap one-per-signer left: on a directory without --trusted-signer, anyone
    could fill a record's free places before the CA endorsed it; the CA then got 409
    and the key could never be admitted.  A daemon with trusted_signers publishes
    them as its record's endorsers: junk from others, first, is refused (403) and
    stored nowhere; the CA's endorsement then admits the key at a peer."""
    a, b, c = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    url = "http://%s:%d" % (c.ip, DIR_PORT)
    serve(daemon_factory, c, tmp_path)                  # no --trusted-signer
    ca_file, _ = new_key(tmp_path, "ca")
    ca = cli(a, "directory", "signer-key", "--private-key", str(ca_file)).stdout.strip()
    n1, n2 = make_node(tmp_path, "n1", 1, a), make_node(tmp_path, "n2", 2, b)
    for n in (n1, n2):
        write_config(n, mode="tun", peers=[], tunables=FAST_TUNABLES,
                     extra={"directory": url, "name": n.name, "trusted_signers": [ca],
                            "endpoints": ["%s:%d" % (n.host.ip, UDP_PORT)]})
        start(daemon_factory, n)
    for n in (n1, n2):
        wait_for(lambda: cli(a, "directory", "lookup", n.name, "--directory", url,
                             check=False).returncode == 0, timeout=20, what="%s published" % n.name)

    # the attack, before the CA endorses n1: 16 throwaway signers, lifetimes the
    # directory would take
    out = attack(b, "junk-endorse", url, n1.pub, "n1", d.MAX_ENDORSEMENTS,
                 int(time.time()) + 3600)
    assert out["codes"] == [403] * d.MAX_ENDORSEMENTS, out
    code, held = a.http("GET", "/records/" + d.b64url(d.key_from_text(n1.pub)), port=DIR_PORT,
                        host=c.ip)
    assert code == 200 and held["endorsements"] == [] and held["endorsers"] == [ca], held

    # the CA's endorsement is stored, and n2 admits n1 through it
    cli(a, "directory", "endorse", "--directory", url, "--private-key", str(ca_file),
        "--public-key", n1.pub, "--name", "n1", "--ttl", "3600")
    code, body = n1.api("POST", "/open/n2", timeout=30)
    assert code == 200 and body["state"] == "established", body
    assert [p["name"] for p in n2.status()["peers"]] == ["n1"], "n2 admitted n1 through the CA"
    assert a.ping(n2.tun4, timeout=5)

    # by hand, the same: phantom directory publish --endorser names the CA; others get 403
    carol_file, carol = new_key(tmp_path, "carol")
    cli(a, "directory", "publish", "--directory", url, "--private-key", str(carol_file),
        "--name", "carol", "--endpoint", "%s:9100" % a.ip, "--endorser", ca)
    junk_file, _ = new_key(tmp_path, "junk")
    refused = cli(b, "directory", "endorse", "--directory", url, "--private-key", str(junk_file),
                  "--public-key", carol, "--name", "carol", "--ttl", "3600", check=False)
    assert refused.returncode == 1 and "403" in refused.stderr, refused.stderr


def test_one_source_cannot_grow_the_directory_past_its_quota(lan3, daemon_factory, tmp_path):
    a, b, c = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    url = "http://%s:%d" % (c.ip, DIR_PORT)
    quota = 40
    serve(daemon_factory, c, tmp_path, "--source-quota", str(quota))
    out = attack(b, "flood", url, 150)          # records and revocations, as fast as it can
    codes = out["codes"]
    assert codes.count(201) <= quota, codes
    assert codes.count(429) >= 150 - quota and set(codes) <= {201, 429}, codes
    assert out["retry_after"] and all(int(s) >= 1 for s in out["retry_after"])
    held = status(a, c)
    assert held["records"] <= quota, held
    assert held["counters"]["limited"] >= 150 - quota
    db = tmp_path / "dir.sqlite"
    size = sum(p.stat().st_size for p in (db, Path(str(db) + "-wal")) if p.exists())
    assert size < 2 * 1024 * 1024, size        # 40 small records (and the WAL)
    # the attacker's flood costs others nothing: a publisher elsewhere is stored
    key_file, key = new_key(tmp_path, "alice")
    cli(a, "directory", "publish", "--directory", url, "--private-key", str(key_file),
        "--name", "alice", "--endpoint", "%s:9000" % a.ip)
    found = json.loads(cli(a, "directory", "lookup", "--directory", url, "alice",
                           "--json").stdout)
    assert found["public_key"] == key


def test_a_watcher_is_served_while_one_host_holds_many_streams(lan3, daemon_factory, tmp_path):
    a, b, c = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    url = "http://%s:%d" % (c.ip, DIR_PORT)
    serve(daemon_factory, c, tmp_path, "--watch-heartbeat", "1")
    owner_file, owner = new_key(tmp_path, "carol")
    cli(a, "directory", "publish", "--directory", url, "--private-key", str(owner_file),
        "--name", "carol", "--endpoint", "%s:9000" % a.ip)
    hog = daemon_factory(b, ["hog", url, owner, "300", "60"],
                         executable=ATTACK, name="hog", wait=False)
    deadline = time.monotonic() + 30
    while "held" not in hog.log():
        assert hog.running and time.monotonic() < deadline, hog.log_tail()
        time.sleep(0.2)
    taken = json.loads([line for line in hog.log().splitlines() if '"held"' in line][-1])
    assert 1 <= taken["held"] < 300, taken        # it got some, not all: 429 for the rest
    assert status(a, c)["watches"] == taken["held"]

    # the legitimate watcher: its heartbeat every second, and its change, at once
    out = attack(a, "watch", url, str(owner_file), "carol", 6)
    assert out["status"] == 200, out
    beats = [t for t, line in out["lines"] if line == {}]
    assert len(beats) >= 3, out
    moved = [t for t, line in out["lines"] if line == ["192.0.2.99:9000"]]
    assert moved and 2.0 <= moved[0] < 5.0, out
    # a client on the greedy host is refused a stream, and follows the record anyway
    out = attack(b, "follow", url, owner, 3)
    assert out["stats"]["watch_refused"] >= 1, out
    assert ["192.0.2.99:9000"] in out["seen"], out

    # the greedy host goes away: its streams are freed within seconds
    hog.kill()
    deadline = time.monotonic() + 5
    while status(a, c)["watches"] > 0:
        assert time.monotonic() < deadline, "streams still held 5 s after their host left"
        time.sleep(0.2)
