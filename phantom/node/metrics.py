"""Prometheus metrics for phantomd (``GET /metrics``), with prometheus-client.

:class:`DaemonCollector` is a custom collector: it reads the daemon's state
and the data path's counters *at scrape time*, on the event loop, so nothing
runs per packet and nothing is kept in step with the data path.  A scrape
costs one ``counters()`` snapshot per peer (the fast path copies a peer's
counters under its table lock, as the timer tick does every ``timer_tick``),
one read of the firewall's counters and, with ``--fast``, of the workers'
batch counters.  bench/metrics_load.py measures what a 10 Hz scraper costs.

Naming follows the Prometheus conventions: a ``phantom_`` prefix, base units
(bytes, seconds), ``_total`` on counters.  Label values are bounded: a peer's
name (peers come from the config, the API or the key directory, never from
a packet; a member's is its certificate's name), a drop reason, a state, a
path, a firewall rule's position, a peer's group (at most 8 per member
certificate, 32 per API peer); never an address, a port or anything taken
from a packet.  So a member's series count grows with the members, as its
peers do: one series per member and family (the states, paths and ciphers
a handful each).

Metric families (see docs/operations.md for the full table):

=========================================== ======= =================================
phantom_info{version,mode,data_path}        gauge   1
phantom_uptime_seconds                      gauge
phantom_healthy                             gauge   1, or 0 once the data plane stopped
phantom_peers                               gauge   number of peers
phantom_peer_rx_bytes_total{peer}           counter decrypted bytes in (tx: sent)
phantom_peer_rx_packets_total{peer}         counter (and tx_packets)
phantom_peer_drops_total{peer,reason}       counter data-path drops of this peer
phantom_peer_handshakes_total{peer}         counter completed handshakes
phantom_peer_latest_handshake_age_seconds   gauge   only for peers that had one
phantom_peer_last_handshake_timestamp_seconds gauge (Unix time)
phantom_peer_state{peer,state}              gauge   1 for the current state, else 0
phantom_peer_path{peer,path}                gauge   1 for the current path ("direct")
phantom_peer_sessions{peer}                 gauge   installed sessions
phantom_peer_cipher{peer,cipher}            gauge   1 for the current session's transport
                                                    cipher (aegis256, secretbox,
                                                    chacha20poly1305), else 0; peers
                                                    with a session only
phantom_peer_group{peer,group}              gauge   1 per firewall group of the peer (a
                                                    member's: its certificate's, at most 8)
phantom_network_info{network,name,domain}   gauge   1 on a member ([network]): the network,
                                                    our certificate's name, the domain
phantom_network_members                     gauge   members in the member set (ours included)
phantom_crypto_info{suites,chacha20poly1305} gauge  1: Phantom suites offered (best
                                                    first) and WireGuard's ChaCha20-
                                                    Poly1305 implementation
phantom_drops_total{reason}                 counter data-path drops, all peers
phantom_handshake_drops_total{reason}       counter control-plane drops
phantom_directory_drops_total{reason}       counter directory answers, DHT items refused
phantom_firewall_rule_hits_total{rule,direction,action} counter  rule = position 0..n-1
phantom_firewall_drops_total{reason}        counter (and accepts_total)
phantom_firewall_conntrack_entries          gauge
phantom_network_policy_seq                  gauge    the network policy in force (issue 21)
phantom_network_policy_rule_hits_total{rule,action} counter  rule = its number in the policy
phantom_dns_queries_total{transport}        counter [dns]: queries received (udp, tcp)
phantom_dns_responses_total{rcode}          counter [dns]: answers by rcode (NOERROR,
                                                    NXDOMAIN, REFUSED, FORMERR, ...)
phantom_dns_drops_total{reason}             counter [dns]: queries dropped unanswered
                                                    (rate_limited, oversized, short, ...)
phantom_dns_names                           gauge   [dns]: names served
phantom_datapath_batches_total{side}        counter --fast: recvmmsg batches per side
phantom_datapath_packets_total{side}        counter --fast: packets in those batches
phantom_datapath_burst_capped_total         counter --fast: batches that filled the burst
phantom_datapath_burst_size                 gauge   --fast: the batch limit (tunables.burst)
process_*                                   prometheus-client's process collector
=========================================== ======= =================================

``side`` is ``inner`` (TUN/TAP or test port: packets to encrypt) or ``udp``
(datagrams from the wire); the mean batch size is
``rate(phantom_datapath_packets_total[1m]) / rate(phantom_datapath_batches_total[1m])``.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__

PEER_STATES = ("idle", "handshaking", "established", "stale", "dead")
PATHS = ("direct", "relayed")          # "relayed" arrives with NAT traversal (later issue)
CIPHERS = ("aegis256", "secretbox", "chacha20poly1305")   # dataplane.ciphers.CIPHER_NAMES
DEFAULT_PATH = "direct"

__all__ = ["DaemonCollector", "make_registry", "render", "CONTENT_TYPE_LATEST", "peer_path"]


def _by_label(name: str, doc: str, label: str, samples: Iterable) -> CounterMetricFamily:
    """A counter family with one sample per (``label`` value, count) of ``samples``."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in samples:
        family.add_metric([value], n)
    return family


def _stats(d, part: str):
    """The ``stats()`` of the daemon's optional ``part``, or None without one."""
    obj = getattr(d, part, None)
    return obj.stats() if obj is not None else None


def peer_path(peer) -> str:
    """The path a peer's traffic takes: "direct" today (a Peer may carry ``path``)."""
    return getattr(peer, "path", None) or DEFAULT_PATH


class DaemonCollector(Collector):
    """Yields phantomd's metric families from ``daemon`` (a phantom.node.daemon.Daemon,
    or anything with ``engine``, ``dp``, ``fw``, ``s``, ``t`` and ``started``; optionally
    ``failure`` and ``directory``, whose ``counters()`` is None until it started)."""

    def __init__(self, daemon):
        self.d = daemon

    def describe(self) -> Iterable:
        return []            # no registration-time collect (the daemon may not be built yet)

    def collect(self):
        """Yield the families one by one, letting go of the GIL between them:
        the fast path's workers take the GIL once per batch (the firewall
        hook), so a scrape is cut into slices of a fraction of a millisecond
        instead of holding them off for a whole render (several ms)."""
        for family in self._families():
            yield family
            time.sleep(0)        # releases the GIL: a waiting worker goes first

    def _families(self):
        d = self.d
        s = d.s
        info = GaugeMetricFamily("phantom_info", "Phantom daemon build and mode",
                                 labels=["version", "mode", "data_path"])
        info.add_metric([__version__, s.mode.value, "fast" if s.fast else "reference"], 1)
        yield info
        yield GaugeMetricFamily("phantom_uptime_seconds", "Seconds since phantomd started",
                                value=max(0.0, time.time() - d.started))
        yield GaugeMetricFamily("phantom_healthy", "1 while the data plane moves packets; 0 once "
                                "it stopped (a fast-path worker died: phantomd then exits with "
                                "status 1)", value=0 if getattr(d, "failure", None) else 1)
        for part, section in (("names", self._dns), ("endpoints", self._endpoint_names)):
            st = _stats(d, part)              # optional parts: nothing without one
            if st is not None:
                yield from section(st)
        if d.dp is None or d.engine is None:
            return
        yield from self._peers(d)
        yield from self._global(d)
        yield from self._directory(d)
        yield from self._firewall(d)
        yield from self._batches(d)

    # -------------------------------------------------------------- per peer
    def _peers(self, d):
        peers = list(d.engine.peers.values())
        yield GaugeMetricFamily("phantom_peers", "Peers known to the daemon", value=len(peers))
        P = ["peer"]
        rx_b = CounterMetricFamily("phantom_peer_rx_bytes", "Bytes received from the peer "
                                   "(decrypted transport payloads)", labels=P)
        tx_b = CounterMetricFamily("phantom_peer_tx_bytes", "Bytes sent to the peer "
                                   "(plaintext size before encryption)", labels=P)
        rx_p = CounterMetricFamily("phantom_peer_rx_packets", "Transport packets received "
                                   "from the peer", labels=P)
        tx_p = CounterMetricFamily("phantom_peer_tx_packets", "Transport packets sent to the peer",
                                   labels=P)
        drops = CounterMetricFamily("phantom_peer_drops", "Packets of this peer dropped by the "
                                    "data path, by reason", labels=["peer", "reason"])
        hs = CounterMetricFamily("phantom_peer_handshakes", "Completed handshakes with the peer",
                                 labels=P)
        age = GaugeMetricFamily("phantom_peer_latest_handshake_age_seconds",
                                "Seconds since the latest completed handshake", labels=P)
        last = GaugeMetricFamily("phantom_peer_last_handshake_timestamp_seconds",
                                 "Unix time of the latest completed handshake", labels=P)
        state = GaugeMetricFamily("phantom_peer_state", "The peer's state: 1 for the current one",
                                  labels=["peer", "state"])
        path = GaugeMetricFamily("phantom_peer_path", "The path to the peer: 1 for the current one",
                                 labels=["peer", "path"])
        sessions = GaugeMetricFamily("phantom_peer_sessions", "Sessions installed for the peer",
                                     labels=P)
        cipher = GaugeMetricFamily("phantom_peer_cipher", "The transport cipher of the peer's "
                                   "current session: 1 for it", labels=["peer", "cipher"])
        from ..dataplane.ciphers import CIPHER_NAMES
        now = time.monotonic()
        for p in peers:
            try:
                c = d.dp.counters(p.id)
            except KeyError:          # removed between the two reads
                continue
            lab = [p.name]
            rx_b.add_metric(lab, c.rx_bytes)
            tx_b.add_metric(lab, c.tx_bytes)
            rx_p.add_metric(lab, c.rx_packets)
            tx_p.add_metric(lab, c.tx_packets)
            for reason, n in sorted(c.drops.items()):
                drops.add_metric([p.name, reason], n)
            hs.add_metric(lab, getattr(p, "handshakes", 0))
            if p.last_handshake_wall:
                age.add_metric(lab, max(0.0, now - p.last_handshake))
                last.add_metric(lab, p.last_handshake_wall)
            cur = p.state.value
            for st in PEER_STATES:
                state.add_metric([p.name, st], 1 if st == cur else 0)
            cur_path = peer_path(p)
            for pa in PATHS if cur_path in PATHS else PATHS + (cur_path,):
                path.add_metric([p.name, pa], 1 if pa == cur_path else 0)
            sessions.add_metric(lab, len(p.sessions))
            cur_cipher = getattr(p, "cipher", None)
            if cur_cipher is not None:
                name = CIPHER_NAMES.get(cur_cipher, "unknown")
                for ci in CIPHERS if name in CIPHERS else CIPHERS + (name,):
                    cipher.add_metric([p.name, ci], 1 if ci == name else 0)
        groups = GaugeMetricFamily("phantom_peer_group", "The peer's firewall groups (a member's: "
                                   "its certificate's): 1 per group", labels=["peer", "group"])
        table = getattr(d, "peers", None)        # the peer door (absent: no groups to show)
        for p in peers if table is not None else ():
            for g in sorted(table.groups_of(p)):
                groups.add_metric([p.name, g], 1)
        yield from (rx_b, tx_b, rx_p, tx_p, drops, hs, age, last, state, path, sessions, cipher,
                    groups)
        membership = getattr(d, "membership", None)
        if membership is not None:
            st = membership.status()
            net = GaugeMetricFamily("phantom_network_info", "This node's network membership: 1",
                                    labels=["network", "name", "domain"])
            net.add_metric([st["network"], st["name"], st["domain"]], 1)
            yield net
            yield GaugeMetricFamily("phantom_network_members", "Members in the member set",
                                    value=st["members"])

    # ---------------------------------------------------------------- global
    def _global(self, d):
        crypto_status = getattr(d, "crypto_status", None)
        if crypto_status is not None:
            cs = crypto_status()
            ci = GaugeMetricFamily("phantom_crypto_info", "Transport ciphers: the Phantom suites "
                                   "offered, best first, and the ChaCha20-Poly1305 implementation "
                                   "for WireGuard peers", labels=["suites", "chacha20poly1305"])
            ci.add_metric([",".join(cs["phantom_suites"]), cs["chacha20poly1305"]["implementation"]], 1)
            yield ci
        drops = CounterMetricFamily("phantom_drops", "Packets dropped by the data path "
                                    "(all peers and none), by reason", labels=["reason"])
        for reason, n in sorted(d.dp.global_drops().items()):
            drops.add_metric([reason], n)
        yield drops
        hs = CounterMetricFamily("phantom_handshake_drops", "Handshake and cookie messages "
                                 "dropped or answered with a cookie, by reason", labels=["reason"])
        for reason in ("malformed", "bad_mac1", "cookie_sent", "rate_limited", "bad_handshake",
                       "unknown_key", "replayed_initiation", "unknown_index", "bad_cookie_reply",
                       "no_common_suite"):
            hs.add_metric([reason], d.engine.drops.get(reason, 0))
        for reason, n in sorted(d.engine.drops.items()):
            if reason not in {s.labels["reason"] for s in hs.samples}:
                hs.add_metric([reason], n)
        yield hs

    # ------------------------------------------------------------- directory
    def _directory(self, d):
        link = getattr(d, "directory", None)
        c = link.counters() if link is not None else None
        if c is None:                 # no directory, or not started yet
            return
        dht = c.get("dht") or {}
        yield _by_label("phantom_directory_drops", "Directory answers and DHT items refused by "
                        "the daemon, by reason", "reason",
                        (("rejected", c.get("rejected", 0)),
                         ("pin_refused", c.get("pin_refused", 0)),
                         ("dht_malformed", dht.get("dropped_malformed", 0)),
                         ("dht_forged", dht.get("dropped_forged", 0))))

    # ------------------------------------------------- endpoints given as names
    def _endpoint_names(self, st):
        yield _by_label("phantom_endpoint_lookups", "DNS lookups of peers' endpoint names, by "
                        "result", "result",
                        (("ok", st["lookups"] - st["failures"]), ("failed", st["failures"])))
        yield CounterMetricFamily("phantom_endpoint_moves", "Endpoints moved to another address "
                                  "because their name resolved to it", value=st["moves"])
        yield GaugeMetricFamily("phantom_endpoint_names", "Peers whose endpoint is a DNS name",
                                value=st["names"])
        yield GaugeMetricFamily("phantom_endpoint_unresolved", "Peers whose endpoint name has "
                                "not resolved yet (no address to reach them at)",
                                value=st["unresolved"])

    # ------------------------------------------------------------ name service
    def _dns(self, st):
        yield _by_label("phantom_dns_queries", "DNS queries received by the name service, by "
                        "transport", "transport",
                        (("udp", st.get("queries_udp", 0)), ("tcp", st.get("queries_tcp", 0))))
        resp = dict.fromkeys(("NOERROR", "NXDOMAIN", "REFUSED", "FORMERR"), 0)
        resp.update(st.get("responses") or {})
        yield _by_label("phantom_dns_responses", "DNS answers sent, by rcode", "rcode",
                        sorted(resp.items()))
        drops = dict.fromkeys(("rate_limited", "oversized", "short", "not_a_query"), 0)
        drops.update(st.get("drops") or {})
        yield _by_label("phantom_dns_drops", "DNS queries dropped without an answer, by reason",
                        "reason", sorted(drops.items()))
        yield GaugeMetricFamily("phantom_dns_names", "Names the name service answers",
                                value=(st.get("names") or {}).get("names", 0))

    # -------------------------------------------------------------- firewall
    def _firewall(self, d):
        fw = d.fw
        if fw is None:
            return
        slot = getattr(d, "firewall", None)          # the rules in force, with the policy
        desc = slot.describe() if hasattr(slot, "describe") else fw.describe()
        hits = CounterMetricFamily("phantom_firewall_rule_hits", "Packets that matched a "
                                   "firewall rule (rule = its position, from 0)",
                                   labels=["rule", "direction", "action"])
        for i, r in enumerate(desc.get("rules", [])):
            hits.add_metric([str(i), str(r.get("direction", "")), str(r.get("action", ""))],
                            r.get("hits", 0))
        yield hits
        yield _by_label("phantom_firewall_drops", "Packets the firewall dropped or rejected, "
                        "by reason", "reason", sorted(desc.get("drops", {}).items()))
        yield _by_label("phantom_firewall_accepts", "Packets the firewall accepted, by reason",
                        "reason", sorted(desc.get("accepts", {}).items()))
        policy = desc.get("policy")
        if policy:
            yield GaugeMetricFamily("phantom_network_policy_seq", "The seq of the network "
                                    "policy in force", value=policy.get("seq", 0))
            ph = CounterMetricFamily("phantom_network_policy_rule_hits", "Packets a network "
                                     "policy rule decided on this node (rule = its number in "
                                     "the policy, from 1)", labels=["rule", "action"])
            for r in policy.get("rules", []):
                if r.get("applies"):
                    ph.add_metric([str(r.get("index", "")), str(r.get("action", ""))],
                                  r.get("hits", 0))
            yield ph
        ct = desc.get("conntrack") or {}
        if "entries" in ct:
            yield GaugeMetricFamily("phantom_firewall_conntrack_entries",
                                    "Flows in the firewall's connection tracking table",
                                    value=ct["entries"])

    # ------------------------------------------------------- fast path batches
    def _batches(self, d):
        stats = getattr(d.dp, "worker_stats", None)
        if not isinstance(stats, dict):
            return
        for what, doc in (("batches", "Batches the fast path's workers read (recvmmsg/read "
                           "rounds that got packets), by side"),
                          ("packets", "Packets in those batches, by side")):
            yield _by_label("phantom_datapath_" + what, doc, "side",
                            [(side, stats.get("%s_%s" % (side, what), 0)) for side in ("inner", "udp")])
        yield CounterMetricFamily("phantom_datapath_burst_capped", "Batches that filled the "
                                  "whole burst (more was waiting)", value=stats.get("capped", 0))
        yield GaugeMetricFamily("phantom_datapath_burst_size", "Most packets in one batch "
                                "(tunables.burst)", value=d.t.burst)


def make_registry(daemon, process: bool = True) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) holding the
    daemon collector and, with ``process``, the process and platform collectors."""
    from prometheus_client import PlatformCollector, ProcessCollector
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DaemonCollector(daemon))
    if process:
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
    return reg


# While a scrape renders, a fast-path worker that wants the GIL (once per
# batch, for the firewall hook) gets it after this long instead of the
# interpreter's default 5 ms switch interval.
SCRAPE_SWITCH_INTERVAL = 0.0002


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (version 0.0.4) of everything in ``registry``.

    A render is a few milliseconds of Python.  For its duration the GIL
    switch interval is shortened (:data:`SCRAPE_SWITCH_INTERVAL`), so the
    fast path's workers, which take the GIL once per batch, wait at most that
    long for it rather than for the whole render; bench/metrics_load.py
    measures the effect on throughput."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(min(old, SCRAPE_SWITCH_INTERVAL))
    try:
        return generate_latest(registry)
    finally:
        sys.setswitchinterval(old)
