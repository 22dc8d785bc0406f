"""Joining a network over the directory, for real (issue 20, steps 1-3).

Directory front ends are ``phantom directory serve --network DIR`` processes
in namespace c; the machines that join are real ``phantom join`` processes
in namespaces a and b; the admin's commands (``phantom network invite|
invites|members|remove --admin-token-file``) run in a.  PostgreSQL is a
server of our own (phantomlab/stores.py) on a Unix socket.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from phantom.network import parse_definition, verify_certificate
from phantomlab.stores import PgCluster, pg_missing

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(300)]

CLI = [sys.executable, "-m", "phantom.cli"]


def cli(host, *args, check=True, timeout=60):
    out = host.run(CLI + [str(a) for a in args], check=False, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def init_network(tmp_path, urls):
    auth = tmp_path / "authority"
    out = subprocess.run(CLI + ["network", "init", "corp", "--dir", str(auth), "--ipv4",
                                "100.100.0.0/16"] + sum((["--directory", u] for u in urls), []),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return auth


def front_end(daemon_factory, host, port, db, auth, name):
    return daemon_factory(host, ["directory", "serve", "--listen", host.ip, "--port", str(port),
                                 "--db", db, "--network", str(auth),
                                 "--source-writes-per-minute", "0"],
                          executable=CLI, http_port=port, http_host=host.ip, name=name,
                          timeout=30)


def admin(host, auth, *args, url=None, check=True):
    extra = ["--directory", url] if url else []
    return cli(host, "network", *args, "--dir", auth, "--admin-token-file",
               auth / "admin.token", *extra, check=check)


def start_join(host, token, name, state, urls):
    argv = CLI + ["join", token, "--name", name, "--state-dir", str(state), "--json", "--no-start"]
    for u in urls:
        argv += ["--directory", u]
    return host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs, timeout=180.0):
    """(returncode, stdout, stderr) of each; any still running at the deadline is killed."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            try:
                stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, stderr = p.communicate(timeout=10)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return out


@pytest.mark.postgres
def test_fifty_concurrent_joins_through_two_front_ends_on_one_postgresql(lan3, daemon_factory,
                                                                         tmp_path):
    missing = pg_missing()
    if missing:
        pytest.skip(missing)
    a, b, c = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    urls = ["http://%s:%d" % (c.ip, p) for p in (4568, 4569)]
    auth = init_network(tmp_path, urls)
    with PgCluster() as pg:
        dsn = asyncio.run(asyncio.wait_for(pg.new_database(), 30))
        fronts = [front_end(daemon_factory, c, 4568 + i, dsn, auth, "front%d" % i)
                  for i in range(2)]
        tokens = []
        for i in range(10):                      # 10 invites of 5 uses: exactly 50 uses
            out = admin(a, auth, "invite", "--uses", "5", "--groups", "fleet", url=urls[i % 2])
            tokens.append(out.stdout.strip())
        one_use = admin(a, auth, "invite", url=urls[0]).stdout.strip()
        procs, names = [], []
        for i in range(50):
            host = a if i % 2 == 0 else b
            order = urls if i % 4 < 2 else urls[::-1]            # both front ends, both orders
            names.append("m%02d" % i)
            procs.append(start_join(host, tokens[i // 5], names[-1], tmp_path / "node" / names[-1],
                                    order))
        for i in range(3):                                      # three racers, one use
            procs.append(start_join(b if i else a, one_use, "racer%d" % i,
                                    tmp_path / ("racer%d" % i), urls[i % 2:] + urls[:i % 2]))
        results = finish(procs)
        joined = [json.loads(o) for rc, o, e in results[:50] if rc == 0]
        assert [e for rc, o, e in results[:50] if rc != 0] == []
        assert len({j["ipv4"] for j in joined}) == 50 and len({j["ipv6"] for j in joined}) == 50
        assert sorted(j["name"] for j in joined) == names
        assert {j["directory"] for j in joined} == set(urls)    # both front ends enrolled some
        racers = results[50:]
        assert sorted(rc for rc, _, _ in racers) == [0, 1, 1], racers
        assert all("invite already used" in e for rc, _, e in racers if rc == 1), racers
        # every machine holds a certificate valid for the definition, for its own key
        for j in joined:
            state = tmp_path / "node" / j["name"] / "network"
            definition = parse_definition((state / "definition.json").read_bytes(),
                                          j["fingerprint"])
            cert = verify_certificate((state / "certificate.json").read_bytes(), definition,
                                      time.time())
            assert str(cert.ipv4) == j["ipv4"] and (state.stat().st_mode & 0o777) == 0o700
            assert ((state / "certificate.json").stat().st_mode & 0o777) == 0o600
        # each invite used at most its uses (all of them here), seen through either front end
        out = admin(a, auth, "invites", "--all", "--json", url=urls[1])
        used = {i["id"]: (i["used"], i["uses"]) for i in json.loads(out.stdout)}
        assert sorted(used.values()) == [(1, 1)] + [(5, 5)] * 10
        # the stream: 51 member events in order; a removal through front end 1 appears
        # in the events front end 0 serves, and the snapshot drops the member
        status, page = a.http("GET", "/network/members?since=0", port=4568, host=c.ip)
        assert status == 200 and [e["seq"] for e in page["events"]] == list(range(1, 52))
        admin(a, auth, "remove", "m07", url=urls[1])
        status, page = a.http("GET", "/network/members?since=51", port=4568, host=c.ip)
        assert [e["op"] for e in page["events"]] == ["removed"]
        m07 = next(j for j in joined if j["name"] == "m07")
        assert page["events"][0]["removal"]["key"] == m07["key"]
        out = admin(a, auth, "members", "--json", url=urls[0])
        assert sorted(m["name"] for m in json.loads(out.stdout)) == \
            sorted(n for n in names if n != "m07") + ["racer%d" % i for i in range(3)
                                                      if racers[i][0] == 0]
        for f in fronts:
            assert f.running and "internal error" not in f.log()
            f.stop()


def test_join_in_namespaces_used_token_unreachable_directory_and_the_config(two_hosts,
                                                                           daemon_factory,
                                                                           tmp_path):
    a, b = two_hosts.a, two_hosts.b
    url = "http://%s:4568" % a.ip
    auth = init_network(tmp_path, [url])
    server = front_end(daemon_factory, a, 4568, str(tmp_path / "dir.sqlite"), auth, "directory")
    token = admin(b, auth, "invite", "--name", "laptop", url=url).stdout.strip()
    state = tmp_path / "laptop"
    out = cli(b, "join", token, "--state-dir", state, "--no-start")
    assert "joined corp as laptop" in out.stdout and "phantomd --config" in out.stdout
    config = (state / "phantom.toml").read_text()
    assert "[network]" in config and 'mode = "tun"' in config and "100.100.0.1/16" in config
    # the daemon's config parser accepts what join wrote
    from phantom.node.config import read_config_file, settings_from_mapping
    s = settings_from_mapping(read_config_file(state / "phantom.toml"), state)
    assert s.network.name == "corp" and s.network.directory == (url,)
    # the token again, from another machine: a clear refusal, exit 1
    out = cli(a, "join", token, "--state-dir", tmp_path / "other", check=False)
    assert out.returncode == 1 and "refused the join: invite already used" in out.stderr
    # joining twice does not leave a second [network] section
    token2 = admin(b, auth, "invite", url=url).stdout.strip()
    out = cli(b, "join", token2, "--name", "again", "--state-dir", state, check=False)
    assert out.returncode == 1 and "already a member" in out.stderr
    # a directory that does not answer: the URL and the reason
    token3 = admin(b, auth, "invite", url=url).stdout.strip()
    server.stop()
    out = cli(b, "join", token3, "--name", "late", "--state-dir", tmp_path / "late",
              check=False)
    assert out.returncode == 1 and ("no directory answered: %s" % url) in out.stderr
    assert not (tmp_path / "late" / "network").exists()
