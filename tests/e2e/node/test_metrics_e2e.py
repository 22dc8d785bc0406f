"""GET /metrics from live tunnels, parsed with prometheus-client's parser:
the counters move with traffic, on both data paths."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from phantomlab.nodes import mesh
from phantomlab.poll import wait_for

pytestmark = pytest.mark.netns


def scrape(node) -> dict:
    """{(sample name, frozenset(labels)): value} from the node's /metrics."""
    code, text = node.api("GET", "/metrics")
    assert code == 200 and isinstance(text, str), (code, text)
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m, name, **labels):
    return m[(name, frozenset(labels.items()))]


@pytest.mark.parametrize("datapath", ["reference", "fast"])
def test_metrics_move_with_traffic(two_hosts, daemon_factory, tmp_path, datapath):
    fw = {"rule": [{"direction": "in", "proto": "udp", "dst_port": 7001, "action": "drop",
                    "comment": "counted"}]}
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], datapath=datapath,
                firewalls={2: fw})
    assert a.host.ns.ping(b.tun4, timeout=10)
    m0a, m0b = scrape(a), scrape(b)
    assert val(m0a, "phantom_peer_state", peer="n2", state="established") == 1
    assert val(m0a, "phantom_peer_path", peer="n2", path="direct") == 1
    assert val(m0a, "phantom_peer_handshakes_total", peer="n2") >= 1
    assert 0 <= val(m0a, "phantom_peer_latest_handshake_age_seconds", peer="n2") < 30
    assert val(m0a, "phantom_info", version=next(dict(k[1])["version"] for k in m0a
                                                 if k[0] == "phantom_info"),
               mode="tun", data_path=datapath) == 1
    assert ("process_resident_memory_bytes", frozenset()) in m0a

    sender = a.host.ns.udp_socket()
    listener = b.host.ns.udp_socket(bind=(b.tun4, 7000))
    listener.settimeout(5)
    try:
        for i in range(50):
            sender.sendto(b"x" * 1000, (b.tun4, 7000))
            listener.recvfrom(2000)
        for i in range(5):
            sender.sendto(b"y" * 100, (b.tun4, 7001))      # dropped by b's rule 0
    finally:
        sender.close()
        listener.close()
    # 50 x (1000 + 8 UDP + 20 IP) bytes at least, counted inner
    wait_for(lambda: val(scrape(a), "phantom_peer_tx_bytes_total", peer="n2")
             >= val(m0a, "phantom_peer_tx_bytes_total", peer="n2") + 50 * 1028,
             what="a's tx_bytes for n2 to grow")
    m1a = scrape(a)
    assert val(m1a, "phantom_peer_tx_packets_total", peer="n2") >= \
        val(m0a, "phantom_peer_tx_packets_total", peer="n2") + 55
    m1b = wait_for(lambda: (lambda m: m if val(m, "phantom_firewall_rule_hits_total", rule="0",
                                                direction="in", action="drop") >= 5 else None)(scrape(b)),
                   what="b's firewall rule hits")
    assert val(m1b, "phantom_peer_rx_bytes_total", peer="n1") >= \
        val(m0b, "phantom_peer_rx_bytes_total", peer="n1") + 50 * 1028
    assert val(m1b, "phantom_peer_rx_packets_total", peer="n1") >= \
        val(m0b, "phantom_peer_rx_packets_total", peer="n1") + 55
    assert val(m1b, "phantom_firewall_drops_total", reason="rule") >= 5
    assert val(m1b, "phantom_peer_drops_total", peer="n1", reason="firewall") >= 5
    if datapath == "fast":
        assert val(m1a, "phantom_datapath_batches_total", side="inner") > \
            val(m0a, "phantom_datapath_batches_total", side="inner")
        assert val(m1a, "phantom_datapath_packets_total", side="inner") >= \
            val(m0a, "phantom_datapath_packets_total", side="inner") + 55
        assert val(m1b, "phantom_datapath_packets_total", side="udp") >= \
            val(m0b, "phantom_datapath_packets_total", side="udp") + 55
    # no label carries an address or a key
    code, text = a.api("GET", "/metrics")
    assert "10.201.0." not in text and a.pub not in text and b.pub not in text


def test_metrics_need_no_token_and_show_no_secrets(two_hosts, daemon_factory, tmp_path):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b])
    code, text = a.host.ns.http("GET", "/metrics")          # no token
    assert code == 200 and "phantom_peer_rx_bytes_total" in text
    key = a.keyfile.read_text().strip()
    token = a.daemon.token
    assert key not in text and token not in text


def test_metrics_on_their_own_listen_address(two_hosts, daemon_factory, tmp_path):
    from phantomlab.nodes import start
    from phantomlab.templates import peer_entry, write_config
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], start_daemons=False)
    write_config(a, mode="tun", peers=[peer_entry(b, mode="tun")],
                 extra={"metrics_listen": "127.0.0.1:9586"})
    start(daemon_factory, a)
    code, text = a.host.ns.http("GET", "/metrics", port=9586)
    assert code == 200 and 'phantom_peer_state{peer="n2",state="idle"} 1.0' in text
    code, body = a.host.ns.http("GET", "/status", port=9586)     # nothing else there
    assert code == 404 and "error" in body
    code, body = a.host.ns.http("GET", "/metrics", port=9586, headers={"Host": "evil.example"})
    assert code == 403
