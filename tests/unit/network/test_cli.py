"""``phantom network init|show|invite|invites``: the authority state
directory (modes, refusal to overwrite, damage), the token on stdout, listing
and revoking, and the join transaction run on that directory.  In-process
with a fixed clock, files in tmp_path."""

from __future__ import annotations

import ipaddress
import json
import os
import stat

import pytest

from phantom.network import InviteError, parse_definition, parse_token, verify_certificate
from phantom.network import authority as A
from phantom.network import cli
from phantom.network import join as J

from .factory import NOW
from .test_join import Node

URL = "https://dir.example.com"


def run(capsys, *argv, now=NOW):
    rc = cli.main([str(a) for a in argv], now=lambda: now)
    out, err = capsys.readouterr()
    return rc, out, err


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def netdir(tmp_path, capsys):
    d = tmp_path / "corp"
    rc, out, err = run(capsys, "init", "corp", "--dir", d, "--directory", URL)
    assert rc == 0, err
    return d


def test_init_makes_the_keys_the_signed_definition_and_private_files(tmp_path, capsys):
    d = tmp_path / "a" / "corp"
    rc, out, err = run(capsys, "init", "corp", "--dir", d, "--directory", URL,
                       "--cert-lifetime", "7d")
    assert rc == 0 and err == ""
    defn = parse_definition((d / "network.json").read_bytes())
    assert defn.name == "corp" and defn.domain == "corp.internal"
    assert defn.ipv4.prefixlen == 16 and defn.ipv4.subnet_of(ipaddress.ip_network("100.64.0.0/10"))
    assert defn.ipv6.prefixlen == 48 and defn.ipv6.subnet_of(ipaddress.ip_network("fd00::/8"))
    assert defn.directory == (URL,) and defn.cert_lifetime == 7 * 86400
    assert defn.fingerprint in out and str(defn.ipv4) in out and "offline" in out
    assert mode(d) == 0o700
    for name in ("authority.key", "admission.key", "admin.token", "ledger.json"):
        assert mode(d / name) == 0o600, name
    assert mode(d / "network.json") == 0o644
    auth = A.AuthorityDir.open(d)
    assert auth.definition == defn and any(a.key == auth.admission.public for a in defn.admission)


def test_init_with_every_option_and_json(tmp_path, capsys):
    key = "A" * 42 + "E="                     # 32 bytes, not a small-order point
    rc, out, err = run(capsys, "init", "lab", "--dir", tmp_path / "lab", "--domain", "lab.example",
                       "--ipv4", "10.20.0.0/16", "--ipv6", "fd12:3456:789a::/48",
                       "--directory", URL, "--directory", "http://10.0.0.1:8080",
                       "--rendezvous", "%s@198.51.100.1:51820" % key,
                       "--relay", "%s@relay.example.com:51821" % key, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["name"], doc["domain"], doc["ipv4"], doc["ipv6"]) == (
        "lab", "lab.example", "10.20.0.0/16", "fd12:3456:789a::/48")
    assert doc["directory"] == [URL, "http://10.0.0.1:8080"]
    assert doc["rendezvous"][0]["endpoint"] == "198.51.100.1:51820"
    assert doc["relays"][0]["endpoint"] == "relay.example.com:51821"


def test_init_refuses_a_directory_that_holds_a_network(netdir, capsys):
    before = {p.name: p.read_bytes() for p in netdir.iterdir()}
    rc, out, err = run(capsys, "init", "other", "--dir", netdir)
    assert rc == 1 and "already holds a network" in err
    assert {p.name: p.read_bytes() for p in netdir.iterdir()} == before


@pytest.mark.parametrize("argv, words", [
    (["--ipv4", "8.8.0.0/16"], "ipv4: 8.8.0.0/16 is not inside"),
    (["--ipv4", "100.64.0.1/16"], "has host bits set"),
    (["--ipv6", "2001:db8::/48"], "is not a ULA /48"),
    (["--domain", "Corp.example"], "must be lowercase"),
    (["--directory", "ftp://x"], "the scheme must be http or https"),
    (["--relay", "%s@host" % ("A" * 42 + "E=")], "the port must be 1-65535"),
])
def test_init_with_a_bad_value_names_it_and_makes_nothing(tmp_path, capsys, argv, words):
    d = tmp_path / "bad"
    rc, out, err = run(capsys, "init", "corp", "--dir", d, *argv)
    assert rc == 1 and words in err and err.startswith("error: ")
    assert not d.exists()


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    for argv in (["init", "corp", "--relay", "nokey"], ["init", "corp", "--cert-lifetime", "1y"],
                 ["invite", "--expires", "soon"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv + ["--dir", str(tmp_path / "x")], now=lambda: NOW)
        assert info.value.code == 2
    assert "is not a duration" in capsys.readouterr().err


def test_invite_prints_the_token_alone_and_stores_only_a_hash(netdir, capsys):
    rc, out, err = run(capsys, "invite", "--dir", netdir, "--groups", "laptops,dev",
                       "--uses", "3", "--expires", "2h")
    assert rc == 0
    text = out.strip()
    assert out.count("\n") == 1
    auth = A.AuthorityDir.open(netdir)
    token = parse_token(text, auth.definition.fingerprint)
    assert token.directory == (URL,) and "3 uses" in err and "groups dev,laptops" in err
    record = auth.read_ledger().invite(token.id)
    assert (record.uses, record.expires, record.groups) == (3, NOW + 7200, ("dev", "laptops"))
    ledger_bytes = (netdir / "ledger.json").read_bytes()
    assert text.encode() not in ledger_bytes
    assert __import__("base64").b64encode(token.secret) not in ledger_bytes


@pytest.mark.parametrize("argv, words", [
    (["--name", "db", "--uses", "2"], "is for one use"),
    (["--expires", "30"], "60 s to 365 days"),
    (["--uses", "0"], "uses must be"),
    (["--groups", "l\u0430ptops"],
     "malformed invite: groups[0]: contains U+0430 (CYRILLIC SMALL LETTER A)"),
    (["--name=db-"], "must not start or end with '-'"),
])
def test_bad_invite_options_are_refused_and_store_nothing(netdir, capsys, argv, words):
    rc, out, err = run(capsys, "invite", "--dir", netdir, *argv)
    assert rc == 1 and words in err and out == ""
    assert A.AuthorityDir.open(netdir).read_ledger().invites() == []


def test_an_invite_needs_a_directory_url(tmp_path, capsys):
    d = tmp_path / "nodir"
    assert run(capsys, "init", "corp", "--dir", d)[0] == 0
    rc, out, err = run(capsys, "invite", "--dir", d)
    assert rc == 1 and "no directory URL" in err
    rc, out, err = run(capsys, "invite", "--dir", d, "--directory", URL)
    assert rc == 0 and parse_token(out.strip()).directory == (URL,)


def test_invites_lists_and_revoke_ends_one(netdir, capsys):
    tokens = [run(capsys, "invite", "--dir", netdir, "--name", "n%d" % i)[1].strip()
              for i in range(3)]
    ids = [parse_token(t).id for t in tokens]
    rc, out, err = run(capsys, "invites", "--dir", netdir)
    assert rc == 0 and all(i in out for i in ids) and out.count("active") == 3
    rc, out, err = run(capsys, "invites", "revoke", ids[1], "--dir", netdir)
    assert rc == 0 and "revoked" in out
    rc, out, err = run(capsys, "invites", "--dir", netdir, "--json")
    assert sorted(r["id"] for r in json.loads(out)) == sorted([ids[0], ids[2]])
    rc, out, err = run(capsys, "invites", "--dir", netdir, "--all", "--json", now=NOW + 2 * 86400)
    assert {r["id"]: r["status"] for r in json.loads(out)} == {
        ids[0]: "expired", ids[1]: "revoked", ids[2]: "expired"}
    rc, out, err = run(capsys, "invites", "revoke", "z" * 16, "--dir", netdir)
    assert rc == 1 and "no invite" in err
    rc, out, err = run(capsys, "invites", "revoke", "--dir", netdir)
    assert rc == 1 and "which invite" in err
    # a revoked invite grants nothing
    auth = A.AuthorityDir.open(netdir)
    with auth.transaction() as ledger, pytest.raises(InviteError) as info:
        J.join(ledger, auth.definition, auth.admission,
               Node("x").request(parse_token(tokens[1])), NOW)
    assert info.value.code == "revoked"


def test_a_join_on_the_state_directory_issues_a_certificate_for_network_json(netdir, capsys):
    token = parse_token(run(capsys, "invite", "--dir", netdir, "--groups", "ops")[1].strip())
    auth = A.AuthorityDir.open(netdir)
    node = Node("cli")
    with auth.transaction() as ledger:
        result = J.join(ledger, auth.definition, auth.admission,
                        node.request(token, name="web1"), NOW)
    defn = parse_definition((netdir / "network.json").read_bytes(), token.network)
    cert = verify_certificate(result.certificate.encode(), defn, NOW, key=node.key)
    assert cert.name == "web1" and cert.groups == ("ops",)
    again = A.AuthorityDir.open(netdir).read_ledger()
    assert again.member(node.key).cert == cert and again.invite(token.id).used == 1
    rc, out, err = run(capsys, "invites", "--dir", netdir, "--all")
    assert "used" in out and "1/1" in out


def test_a_failed_change_writes_nothing(netdir):
    auth = A.AuthorityDir.open(netdir)
    before = (netdir / "ledger.json").read_bytes()
    with pytest.raises(InviteError):
        with auth.transaction() as ledger:
            J.revoke_invite(ledger, "q" * 16)
    assert (netdir / "ledger.json").read_bytes() == before


def test_a_damaged_or_foreign_directory_is_a_clear_error(netdir, tmp_path, capsys):
    rc, out, err = run(capsys, "show", "--dir", tmp_path / "empty")
    assert rc == 1 and "holds no network" in err and "phantom network init" in err
    rc, out, err = run(capsys, "show", "--dir", netdir)
    assert rc == 0 and "network corp" in out
    other = tmp_path / "other"
    assert run(capsys, "init", "other", "--dir", other)[0] == 0
    (netdir / "admission.key").write_bytes((other / "admission.key").read_bytes())
    rc, out, err = run(capsys, "invite", "--dir", netdir)
    assert rc == 1 and "is not an admission key of network corp" in err
    (netdir / "authority.key").write_bytes((other / "authority.key").read_bytes())
    rc, out, err = run(capsys, "show", "--dir", netdir)
    assert rc == 1 and "is not the authority key" in err


def test_a_damaged_ledger_is_refused_not_a_traceback(netdir, capsys):
    (netdir / "ledger.json").write_text('{"v":1,"serial":0')
    rc, out, err = run(capsys, "invite", "--dir", netdir)
    assert rc == 1 and "malformed" in err and "Traceback" not in err


def test_a_tampered_definition_is_refused(netdir, capsys):
    doc = json.loads((netdir / "network.json").read_bytes())
    doc["ipv4"] = "100.64.0.0/10"
    (netdir / "network.json").write_text(json.dumps(doc))
    rc, out, err = run(capsys, "show", "--dir", netdir)
    assert rc == 1 and "signature does not verify" in err


def test_the_authority_key_may_be_taken_offline(netdir, capsys):
    (netdir / "authority.key").unlink()
    rc, out, err = run(capsys, "invite", "--dir", netdir)
    assert rc == 0 and out.startswith("phantom1.")


def test_the_default_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("PHANTOM_NETWORK_DIR", str(tmp_path / "env"))
    assert cli.default_dir() == tmp_path / "env"
    monkeypatch.delenv("PHANTOM_NETWORK_DIR")
    assert cli.default_dir().name == "authority"


def test_phantom_network_is_a_phantom_command(tmp_path):
    """`phantom network ...` reaches these commands (phantom/cli.py's DELEGATED)."""
    import subprocess
    import sys

    from tests.support import REPO

    def phantom(*argv):
        return subprocess.run([sys.executable, "-m", "phantom.cli", "network", *map(str, argv)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    cp = phantom("init", "corp", "--dir", tmp_path / "corp", "--directory", URL)
    assert cp.returncode == 0, cp.stderr
    cp = phantom("invite", "--dir", tmp_path / "corp", "--name", "web1")
    assert cp.returncode == 0 and cp.stdout.startswith("phantom1."), cp.stderr
    cp = phantom("invites", "--dir", tmp_path / "nowhere")
    assert cp.returncode == 1 and cp.stderr.startswith("error: ") and "Traceback" not in cp.stderr


def test_concurrent_commands_wait_for_the_lock_and_lose_no_invite(netdir):
    """Invites made at once by several processes: each waits for the ledger's
    lock (seen in /proc/locks), none overwrites another's."""
    import fcntl
    import subprocess
    import sys
    import time

    from tests.support import REPO

    lock = netdir / ".lock"
    fd = os.open(str(lock), os.O_RDWR | os.O_CREAT, 0o600)
    procs = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-m", "phantom.network.cli", "invite", "--dir",
                                   str(netdir), "--name", "c%d" % i], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for i in range(4)]
        inode = os.stat(lock).st_ino
        deadline = time.monotonic() + 60
        waiting = 0
        while time.monotonic() < deadline:
            with open("/proc/locks") as f:
                waiting = sum(1 for line in f if "->" in line and
                              line.split()[6].endswith(":%d" % inode))
            if waiting == 4 or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        assert waiting == 4 and all(p.poll() is None for p in procs)
        assert A.AuthorityDir.open(netdir).read_ledger().invites() == []
    finally:
        os.close(fd)                                  # releases the lock
        outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    names = sorted(i.name for i in A.AuthorityDir.open(netdir).read_ledger().invites())
    assert names == ["c0", "c1", "c2", "c3"]
