"""Picking an exit at run time (issue 22 item 3, the client's side;
docs/routes.md "Picking an exit at run time"): on one LAN, client a, exit
b, internet host c (198.51.100.1, 2001:db8::1, a real DNS server, dnsmasq,
on 198.51.100.1), and d, a peer of b's that may not use it.  a's default
route goes via b, which forwards (exit_node), so without an exit c sees a's
own address; `phantom exit use exit1` sends a's traffic through the tunnel
and c sees b's; `dig @<exit's tunnel address>` resolves a name c's dnsmasq
serves (the exit forwards it), d gets REFUSED; the choice survives a
reload and a restart; `phantom exit off` and c sees a again."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from phantomlab import netns
from phantomlab.nodes import make_node, start
from phantomlab.poll import wait_for
from phantomlab.templates import UDP_PORT, write_config
from tests.e2e.routes.test_exit_node import NET4, NET6, sources_to

pytestmark = [pytest.mark.netns, pytest.mark.slow]

NAME, NAME_ADDR = "www.lab.example", "198.51.100.80"
EXIT4, EXIT6 = "10.99.0.2", "fd99::2"


def cli(node, *args):
    out = node.host.run([sys.executable, "-m", "phantom.cli", "--token-file", str(node.state_dir / "token"),
                         *args], check=False, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def dig(host, server: str, name: str = NAME) -> str:
    out = host.run(["dig", "@" + server, name, "A", "+time=3", "+tries=2", "+noall", "+answer", "+comments"],
                   check=False, timeout=20)
    return out.stdout


def seen_from(a, c, sniffer, tag: str) -> set:
    cap = sniffer(c, "eth0", "icmp or icmp6", name=tag)
    assert a.ns.ping(NET4, timeout=10), "the client does not reach the internet host (%s)" % tag
    assert a.ns.ping(NET6, timeout=10)
    seen = cap.stop()
    return sources_to(seen, NET4) | sources_to(seen, NET6)


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_exit_use_and_off_at_run_time_with_dns_through_the_exit(daemon_factory, sniffer, tmp_path, datapath):
    if shutil.which("dnsmasq") is None:
        pytest.fail("dnsmasq is not installed: run setup.sh (dnsmasq-base)")
    with netns.lan(4) as topo:
        a, b, c, d = (topo.hosts[r] for r in "abcd")
        c.ns.ip("addr", "add", NET4 + "/32", "dev", "lo")
        c.ns.ip("addr", "add", NET6 + "/128", "dev", "lo")
        for h in (b,):
            h.ns.ip("route", "add", NET4, "via", c.ip)
            h.ns.ip("-6", "route", "add", NET6, "via", c.ip6)
        for h in (a, d):
            h.ns.ip("route", "add", "default", "via", b.ip)
            h.ns.ip("-6", "route", "add", "default", "via", b.ip6)
        c.ns.ip("route", "add", "default", "via", b.ip)            # answers to a's direct traffic
        c.ns.ip("-6", "route", "add", "default", "via", b.ip6)
        dnsmasq = c.ns.popen(["dnsmasq", "--keep-in-foreground", "--no-daemon", "--no-resolv", "--no-hosts",
                              "--bind-interfaces", "--listen-address=" + NET4, "--except-interface=eth0",
                              "--port=53", "--host-record=%s,%s" % (NAME, NAME_ADDR), "--pid-file",
                              "--log-queries", "--log-facility=-"],
                             stdout=open(tmp_path / "dnsmasq.log", "w"), stderr=__import__("subprocess").STDOUT)
        public = Path(tempfile.mkdtemp(prefix="phantom-exituse-"))
        try:
            public.chmod(0o755)
            client, exit_, other = (make_node(tmp_path, n, i, h) for n, i, h in
                                    (("client", 1, a), ("exit1", 2, b), ("other", 4, d)))
            write_config(exit_, mode="tun", extra={"exit_node": True, "exit_dns_upstream": [NET4]}, peers=[
                {"name": "client", "public_key": client.pub, "allowed_ips": ["10.99.0.1/32", "fd99::1/128"],
                 "allow_exit": True},
                {"name": "other", "public_key": other.pub, "allowed_ips": ["10.99.0.4/32", "fd99::4/128"]}])
            client.config = public / "client.toml"
            write_config(client, mode="tun", extra={"kill_switch": True}, peers=[
                {"name": "exit1", "public_key": exit_.pub, "allowed_ips": [EXIT4 + "/32", EXIT6 + "/128"],
                 "endpoint": "%s:%d" % (b.ip, UDP_PORT), "exit_node": True}])
            client.config.chmod(0o644)

            def client_config(offers: bool):
                write_config(client, mode="tun", extra={"kill_switch": True}, peers=[
                    {"name": "exit1", "public_key": exit_.pub, "allowed_ips": [EXIT4 + "/32", EXIT6 + "/128"],
                     "endpoint": "%s:%d" % (b.ip, UDP_PORT), **({"exit_node": True} if offers else {})}])
                client.config.chmod(0o644)

            write_config(other, mode="tun", peers=[{"name": "exit1", "public_key": exit_.pub,
                                                    "allowed_ips": [EXIT4 + "/32"],
                                                    "endpoint": "%s:%d" % (b.ip, UDP_PORT)}])
            start(daemon_factory, exit_, datapath)
            start(daemon_factory, client, datapath)
            start(daemon_factory, other, datapath)
            assert wait_for(lambda: dnsmasq.poll() is None and "started" in (tmp_path / "dnsmasq.log").read_text(),
                            timeout=10, what="dnsmasq")

            # no exit: a reaches c directly (b forwards it as a router): c sees a
            assert "none" in cli(client, "exit")
            assert seen_from(a, c, sniffer, "direct") == {a.ip, a.ip6}

            out = cli(client, "exit", "use", "exit1")
            assert "exit:      exit1" in out, out
            assert "dev phtun0" in a.run(["ip", "route", "get", NET4]).stdout
            assert seen_from(a, c, sniffer, "exit") == {b.ip, b.ip6}, "the exit's address is not the source"
            st = client.status()["exit"]
            assert st["use"] == "exit1" and st["dns"] == [EXIT4, EXIT6], st
            assert st["kill_switch"] == ["ipv4", "ipv6"] and "nameserver 10.99.0.2" in st["resolv_conf"], st

            # DNS through the tunnel: the exit forwards to the internet's resolver
            answer = dig(a, EXIT4)
            assert "status: NOERROR" in answer and NAME_ADDR in answer, answer
            assert NAME_ADDR in dig(a, EXIT6)
            assert "query[A] %s from %s" % (NAME, b.ip) in (tmp_path / "dnsmasq.log").read_text()
            refused = dig(d, EXIT4)                 # a peer not allowed to use the exit: never an open resolver
            assert "status: REFUSED" in refused and NAME_ADDR not in refused, refused
            assert "status: REFUSED" in dig(b, EXIT4) or not dig(b, EXIT4), "answered outside the tunnel"
            counters = exit_.status()["exit_dns"]["counters"]
            assert counters["forwarded"] >= 2 and counters["refused.not_allowed"] >= 1, counters

            # survives a reload and a restart
            code, body = client.api("POST", "/reload")
            assert code == 200, body
            assert client.status()["exit"]["use"] == "exit1"
            assert seen_from(a, c, sniffer, "reloaded") == {b.ip, b.ip6}
            client.daemon.kill(signal.SIGTERM)
            start(daemon_factory, client, datapath)
            assert client.status()["exit"]["use"] == "exit1"
            assert seen_from(a, c, sniffer, "restarted") == {b.ip, b.ip6}

            # a reload that takes exit_node away turns the exit off, saying so; use is refused then
            client_config(False)
            code, body = client.api("POST", "/reload")
            assert code == 200 and any("exit off" in n for n in body["notes"]), body
            assert client.status()["exit"]["use"] is None
            assert client.peer("exit1")["offers"] == {}
            assert seen_from(a, c, sniffer, "withdrawn") == {a.ip, a.ip6}
            code, body = client.api("PUT", "/exit", {"peer": "exit1"})
            assert code == 400, body
            client_config(True)
            code, body = client.api("POST", "/reload")
            assert code == 200, body
            cli(client, "exit", "use", "exit1")
            assert seen_from(a, c, sniffer, "again") == {b.ip, b.ip6}

            out = cli(client, "exit", "off")
            assert "none" in out, out
            assert "phtun0" not in a.run(["ip", "route", "get", NET4]).stdout
            assert client.status()["privsep"]["kill_switch"] == []
            assert seen_from(a, c, sniffer, "off") == {a.ip, a.ip6}
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
            shutil.rmtree(public, ignore_errors=True)


def test_exit_use_refuses_a_peer_that_does_not_offer_exit(lan3, daemon_factory, tmp_path):
    a, b = lan3.hosts["a"], lan3.hosts["b"]
    client, bob = make_node(tmp_path, "client", 1, a), make_node(tmp_path, "bob", 2, b)
    write_config(client, mode="tun", peers=[{"name": "bob", "public_key": bob.pub, "allowed_ips": ["10.99.0.2/32"],
                                             "endpoint": "%s:%d" % (b.ip, UDP_PORT)}])
    start(daemon_factory, client)
    code, body = client.api("PUT", "/exit", {"peer": "bob"})
    assert code == 400 and "does not offer itself as exit" in body["error"], body
    code, body = client.api("PUT", "/exit", {"peer": "nobody"})
    assert code == 404, body
    code, body = client.api("PUT", "/exit", {"peer": "bob", "x": 1})
    assert code == 400, body
    assert client.status()["privsep"]["full_tunnel"] == []
    assert "default" not in a.run(["ip", "route", "show", "table", "all", "dev", "phtun0"]).stdout


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_switching_exits_with_the_kill_switch_never_leaks(daemon_factory, sniffer, tmp_path, datapath):
    """Client a (kill switch on) pings the internet host c without pause
    while `phantom exit use exit2` replaces exit1: c sees exit1's address,
    then exit2's; a's uplink never carries the ping in plaintext (a switch
    in two steps, off then use, would: a's default route goes via b)."""
    import subprocess
    with netns.lan(4) as topo:
        a, b, c, d = (topo.hosts[r] for r in "abcd")
        c.ns.ip("addr", "add", NET4 + "/32", "dev", "lo")
        for h in (b, d):
            h.ns.ip("route", "add", NET4, "via", c.ip)
        a.ns.ip("route", "add", "default", "via", b.ip)
        client, exit1, exit2 = (make_node(tmp_path, n, i, h) for n, i, h in
                                (("client", 1, a), ("exit1", 2, b), ("exit2", 4, d)))
        for ex in (exit1, exit2):
            write_config(ex, mode="tun", extra={"exit_node": True, "exit_dns_upstream": [NET4]}, peers=[
                {"name": "client", "public_key": client.pub, "allowed_ips": ["10.99.0.1/32"], "allow_exit": True}])
        write_config(client, mode="tun", extra={"kill_switch": True}, peers=[
            {"name": ex.name, "public_key": ex.pub, "allowed_ips": [ex.tun4 + "/32"],
             "endpoint": "%s:%d" % (ex.host.ip, UDP_PORT), "exit_node": True} for ex in (exit1, exit2)])
        for n in (exit1, exit2, client):
            start(daemon_factory, n, datapath)
        cli(client, "exit", "use", "exit1")
        assert a.ns.ping(NET4, timeout=10)

        plain = sniffer(a, "eth0", "icmp and host %s" % NET4, name="uplink")
        seen = sniffer(c, "eth0", "icmp", name="internet")
        pinger = a.ns.popen(["ping", "-n", "-i", "0.002", "-w", "8", NET4], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: b.ip in sources_to(seen.packets(), NET4), timeout=5, what="pings through exit1")
            out = cli(client, "exit", "use", "exit2")
            assert "exit:      exit2" in out, out
            wait_for(lambda: d.ip in sources_to(seen.packets(), NET4), timeout=5, what="pings through exit2")
        finally:
            pinger.wait(timeout=15)
        assert plain.stop() == [], "the ping left a's uplink in plaintext during the switch"
        sources = sources_to(seen.stop(), NET4)
        assert sources == {b.ip, d.ip}, sources
        st = client.status()
        assert st["exit"]["use"] == "exit2" and st["privsep"]["kill_switch"] == ["ipv4", "ipv6"], st["privsep"]
