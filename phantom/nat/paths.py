"""Per-peer candidate endpoints and path selection (sans-IO, injected clock).

For every peer the table keeps:

* **candidates**: endpoints the peer may be reached at, with where each came
  from ("config", "rendezvous" answer, "punch" request, "roamed").  Learnt
  candidates expire after ``candidate_ttl``; at most ``max_candidates`` are
  kept (newest first).  The engine sends every handshake initiation to all
  of them: the first that completes wins, and the data path then pins the
  endpoint the answer came from;
* **the path in use**: ``direct`` (with its endpoint), ``relayed`` (via a
  relay's name), or none; every change is returned as a :class:`PathChange`
  with its reason, for the log and the API;
* **punch attempts**: when we last asked a rendezvous for the peer, so the
  caller knows when no direct path appeared within ``relay_after`` seconds
  (:meth:`PathTable.wants_relay`) and when to try direct again while relayed
  (:meth:`PathTable.wants_direct_probe`, every ``probe_interval``);
* **tries per learnt endpoint** (:meth:`PathTable.gate`, which the engine
  asks before every initiation): a learnt candidate is an unverified claim
  (a rendezvous passes on whatever "local endpoints" a peer registered), so
  it gets at most ``probe_tries`` initiations, spaced ``probe_backoff``,
  twice that, four times that...; the count survives the candidate's
  refreshes and expiry and is forgotten ``probe_memory`` seconds after the
  last try, or at once when the peer answers from that endpoint (it is then
  the peer's real endpoint).  At most ``max_probed`` endpoints per peer are
  counted at a time: beyond that, new ones are not tried (``refused``).  So
  no peer can make us send more than ``max_probed * probe_tries``
  initiations in ``probe_memory`` seconds to addresses it merely claims.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

log = logging.getLogger("phantom.paths")

DIRECT = "direct"
RELAYED = "relayed"


@dataclass
class Candidate:
    endpoint: tuple
    source: str
    added: float


@dataclass
class Probe:
    """Initiations sent to one learnt endpoint that never answered."""
    tries: int = 0
    last: float = float("-inf")


@dataclass(frozen=True)
class PathChange:
    peer_id: int
    old: str
    new: str
    reason: str


@dataclass
class PeerPath:
    peer_id: int
    candidates: list = field(default_factory=list)     # [Candidate], newest first
    kind: Optional[str] = None                         # DIRECT, RELAYED or None
    endpoint: Optional[tuple] = None
    via: Optional[str] = None                          # relay name when RELAYED
    since: float = 0.0
    punch_started: Optional[float] = None
    last_probe: float = float("-inf")

    def label(self) -> str:
        if self.kind == DIRECT:
            return "direct"
        if self.kind == RELAYED:
            return "relayed via %s" % self.via
        return "none"


class PathTable:
    def __init__(self, clock: Callable[[], float], candidate_ttl: float = 120.0, max_candidates: int = 8,
                 relay_after: float = 3.0, probe_interval: float = 5.0, probe_tries: int = 4,
                 probe_backoff: float = 5.0, probe_memory: float = 600.0, max_probed: int = 16):
        self.clock = clock
        self.ttl = candidate_ttl
        self.max = max_candidates
        self.relay_after = relay_after
        self.probe_interval = probe_interval
        self.probe_tries = probe_tries
        self.probe_backoff = probe_backoff
        self.probe_memory = probe_memory
        self.max_probed = max_probed
        self._p: dict[int, PeerPath] = {}
        self._probes: dict[int, dict] = {}         # peer id -> {endpoint: Probe}
        self.refused: Counter = Counter()

    def peer(self, peer_id: int) -> PeerPath:
        p = self._p.get(peer_id)
        if p is None:
            p = self._p[peer_id] = PeerPath(peer_id)
        return p

    def forget(self, peer_id: int) -> None:
        self._p.pop(peer_id, None)
        self._probes.pop(peer_id, None)

    def drop_learnt(self, peer_id: int) -> bool:
        """Forget the peer's learnt candidates (not what they were tried);
        True if there were any."""
        p = self._p.get(peer_id)
        if p is None:
            return False
        keep = [c for c in p.candidates if c.source == "config"]
        dropped = len(keep) != len(p.candidates)
        p.candidates = keep
        return dropped

    def has_learnt(self, peer_id: int) -> bool:
        p = self._p.get(peer_id)
        return p is not None and any(c.source != "config" for c in p.candidates)

    # -------------------------------------------------- tries per endpoint
    def gate(self, peer_id: int, endpoints: Iterable) -> list:
        """Of ``endpoints`` (learnt candidates an initiation would go to),
        those it may go to now; each of them is counted as tried."""
        now = self.clock()
        probes = self._probes.get(peer_id)
        if probes is None:
            probes = self._probes[peer_id] = {}
        for ep in [ep for ep, pr in probes.items() if now - pr.last >= self.probe_memory]:
            del probes[ep]
        out = []
        for ep in endpoints:
            ep = (str(ep[0]), int(ep[1]))
            pr = probes.get(ep)
            if pr is None:
                if len(probes) >= self.max_probed:
                    self.refused["candidate_over_budget"] += 1
                    continue
                pr = probes[ep] = Probe()
            if pr.tries >= self.probe_tries:
                continue                         # spent until probe_memory after the last try
            if pr.tries and now - pr.last < self.probe_backoff * 2 ** (pr.tries - 1):
                continue                         # backing off
            pr.tries += 1
            pr.last = now
            out.append(ep)
        return out

    def tries(self, peer_id: int, endpoint) -> int:
        pr = self._probes.get(peer_id, {}).get((str(endpoint[0]), int(endpoint[1])))
        return pr.tries if pr else 0

    def verified(self, peer_id: int, endpoint) -> None:
        """The peer answered from ``endpoint``: it is really there."""
        self._probes.get(peer_id, {}).pop((str(endpoint[0]), int(endpoint[1])), None)

    # ------------------------------------------------------------ candidates
    def add_candidates(self, peer_id: int, endpoints: Iterable, source: str) -> list:
        """Add (or refresh) candidates; returns the endpoints that were new."""
        now = self.clock()
        p = self.peer(peer_id)
        new = []
        for ep in endpoints:
            ep = (str(ep[0]), int(ep[1]))
            old = next((c for c in p.candidates if c.endpoint == ep), None)
            if old is not None:
                p.candidates.remove(old)
                if old.source == "config":
                    source_ = old.source
                else:
                    source_ = source
                p.candidates.insert(0, Candidate(ep, source_, now))
            else:
                p.candidates.insert(0, Candidate(ep, source, now))
                new.append(ep)
        keep = [c for c in p.candidates if c.source == "config"]
        learnt = [c for c in p.candidates if c.source != "config"][: max(0, self.max - len(keep))]
        p.candidates = [c for c in p.candidates if c in keep or c in learnt]
        return new

    def targets(self, peer_id: int) -> list:
        """Endpoints a handshake initiation goes to: live candidates, the one in use first."""
        now = self.clock()
        p = self.peer(peer_id)
        p.candidates = [c for c in p.candidates if c.source == "config" or now - c.added < self.ttl]
        eps = [c.endpoint for c in p.candidates]
        if p.kind == DIRECT and p.endpoint in eps:
            eps.remove(p.endpoint)
            eps.insert(0, p.endpoint)
        return eps

    # ------------------------------------------------------------- the path
    def direct(self, peer_id: int, endpoint: tuple, reason: str) -> Optional[PathChange]:
        p = self.peer(peer_id)
        endpoint = (str(endpoint[0]), int(endpoint[1]))
        p.punch_started = None
        if p.kind == DIRECT and p.endpoint == endpoint:
            return None
        old = p.label() + ("" if p.endpoint is None else " %s:%d" % p.endpoint)
        p.kind, p.endpoint, p.via, p.since = DIRECT, endpoint, None, self.clock()
        return PathChange(peer_id, old, "direct %s:%d" % endpoint, reason)

    def relayed(self, peer_id: int, relay: str, reason: str) -> Optional[PathChange]:
        p = self.peer(peer_id)
        if p.kind == RELAYED and p.via == relay:
            return None
        old = p.label()
        p.kind, p.endpoint, p.via, p.since = RELAYED, None, relay, self.clock()
        return PathChange(peer_id, old, p.label(), reason)

    def down(self, peer_id: int, reason: str) -> Optional[PathChange]:
        p = self.peer(peer_id)
        if p.kind is None:
            return None
        old = p.label()
        p.kind, p.endpoint, p.via = None, None, None
        return PathChange(peer_id, old, "none", reason)

    # --------------------------------------------------------- punch timing
    def punch_started(self, peer_id: int) -> None:
        p = self.peer(peer_id)
        if p.punch_started is None and p.kind != DIRECT:
            p.punch_started = self.clock()

    def wants_relay(self, peer_id: int) -> bool:
        """Punching began ``relay_after`` ago and no direct path came up."""
        p = self.peer(peer_id)
        return p.kind is None and p.punch_started is not None and \
            self.clock() - p.punch_started >= self.relay_after

    def wants_direct_probe(self, peer_id: int) -> bool:
        """Relayed: time to try direct candidates again (every ``probe_interval``)."""
        p = self.peer(peer_id)
        now = self.clock()
        if p.kind != RELAYED or now - p.last_probe < self.probe_interval:
            return False
        p.last_probe = now
        return True

    def describe(self, peer_id: int) -> dict:
        p = self.peer(peer_id)
        return {"path": p.kind or "none", "via": p.via,
                "candidates": ["%s:%d" % c.endpoint for c in p.candidates]}
