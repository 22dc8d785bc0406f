"""The one door for peers: every add, remove and change of a peer goes
through a :class:`PeerTable`, which keeps the engine, the data path, NAT
traversal and the firewall's name table in step.

Who comes through it: start-up (the config file's peers, startup.py), a
reload (the file's changes as one :class:`Batch`, reload.py), WireGuard's
UAPI (``wg set``, uapi.py), ``POST /open`` and ``/close`` (controller.py),
the key directory's admissions, revocations and moves (dirlink.py), the
moves of endpoints given as DNS names (endpoints.py).

* the engine (:class:`phantom.control.engine.Engine`) checks first: a key,
  a prefix or a field it refuses is a ValueError and nothing changed;
* the data path follows in the same call; every route change goes through
  its atomic ``update_routes`` (``add_peer`` uses it too), so no packet is
  routed by a mix of the old and the new table;
* NAT traversal keeps in step through the engine's actions, which the
  executor carries out and NAT traversal observes (executor.py, nat.py): a
  removed peer's ``ClearKeys`` makes it forget the peer's paths, relay pairs
  and sessions;
* the kernel's routes (TUN mode, :class:`phantom.privsep.routes.KernelRoutes`
  through the privileged helper) follow in the same call: a prefix outside
  the interface's subnets is routed into the device *before* the data path
  starts sending it to a peer, and its route goes *after* the data path
  stopped (no peer has it any more), for every peer, whoever brought it
  (the config file, ``open``, the key directory, a reload, ``wg set``);
  a route the kernel refuses is a ValueError naming it, nothing changed;
* the firewall's name table is a view of the engine's indexes
  (:class:`PeerNames`): in step by construction, never recomputed;
* the firewall's group map (which peers are in which group, for rules with
  ``src_group``/``dst_group``) is kept here, per peer: a change of who is in
  which group (a peer added or removed with groups, :meth:`PeerTable.set_groups`
  -- a reload, ``POST /open``, later the network's member stream) calls
  ``on_groups`` once, and the daemon recompiles the rules in place
  (firewall.py; connection tracking carries over);
* so does a peer coming or going whose name or key a rule's ``peer`` names
  (``named_by_rules``: a rule naming a peer not known yet waits for it,
  matching nothing, and one whose peer goes matches nothing again), whoever
  brings it: a member learnt from the stream, a directory admission,
  ``open``/``close``, ``wg set`` (a reload installs its own rules).

Cost: a change costs what it touches: the engine's checks run per changed
prefix and the data path replaces the routes of the peers named, never a walk
of every peer, so thousands of peers can come and go one by one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Container, Iterable, Iterator, Optional

from ..control.peer import Peer


def b64(key: bytes) -> str:
    return base64.b64encode(bytes(key)).decode()


def _key_of(ref: str) -> Optional[bytes]:
    """The 32-byte key ``ref`` is the base64 of, exactly (else None)."""
    try:
        raw = base64.b64decode(ref, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 and b64(raw) == ref else None


class PeerNames(Mapping):
    """The firewall's name table: a peer's name, or its public key in
    base64, -> its id; where several peers match, the last added (as a table
    written peer by peer in id order would hold).  A view of the engine's
    indexes: two dict lookups per name, nothing kept."""

    def __init__(self, engine):
        self._engine = engine

    def __getitem__(self, ref):
        if not isinstance(ref, str):
            raise KeyError(ref)
        found = self._engine.peers_named(ref)[-1:]
        key = _key_of(ref)
        holder = self._engine.peer_by_key(key) if key is not None else None
        if holder is not None:
            found.append(holder)
        if not found:
            raise KeyError(ref)
        return max(p.id for p in found)

    def __iter__(self):
        for p in list(self._engine.peers.values()):
            yield p.name
            yield b64(p.public_key)

    def __len__(self) -> int:
        return 2 * len(self._engine.peers)


def _planned_ids(engine, configs: Iterable) -> Iterator[tuple]:
    """(config, id) for each configured peer: its id, or the id
    :meth:`Engine.add_peer` will give it (in order) when it is new."""
    next_id = engine.next_peer_id
    for pc in configs:
        peer = engine.peer_by_key(bytes(pc.public_key))
        if peer is None:
            pid, next_id = next_id, next_id + 1
        else:
            pid = peer.id
        yield pc, pid


def planned_names(engine, configs: Iterable, keep: Iterable[Peer] = ()) -> dict:
    """The firewall's name table as it will be once the peers ``configs``
    (a config file's: ``name`` and ``public_key``) are in: the peers ``keep``
    under their names, each configured peer under its name and key with its
    id, or the id :meth:`Engine.add_peer` will give it (in order) when new."""
    names: dict = {}
    for pe in keep:
        names[pe.name] = pe.id
        names[b64(pe.public_key)] = pe.id
    for pc, pid in _planned_ids(engine, configs):
        names[pc.name] = pid
        names[b64(pc.public_key)] = pid
    return names


def planned_groups(engine, configs: Iterable, keep: Iterable[Peer] = (),
                   table: Optional["PeerTable"] = None) -> dict:
    """The firewall's group map (group -> peer ids) as it will be once the
    peers ``configs`` (a config file's, each with ``groups``) are in, with
    the ids :func:`planned_names` gives them; the peers ``keep`` with their
    groups in ``table`` now."""
    out: dict = {}
    for pe in keep:
        for g in (table.groups_of(pe) if table is not None else ()):
            out.setdefault(g, set()).add(pe.id)
    for pc, pid in _planned_ids(engine, configs):
        for g in getattr(pc, "groups", ()):
            out.setdefault(g, set()).add(pid)
    return {g: frozenset(ids) for g, ids in out.items()}


@dataclass
class Batch:
    """Peers that change together (a reload; later, a member set's delta),
    applied by :meth:`PeerTable.apply` in one step for the data path's routes.
    The caller checked the result (``Engine.route_conflict``) before."""
    remove: list = field(default_factory=list)    # Peer
    adopt: list = field(default_factory=list)     # Peer: the config file owns it now
    routes: dict = field(default_factory=dict)    # existing peer id -> its prefixes after
    update: list = field(default_factory=list)    # (Peer, {field: value}) for Engine.update_peer
    add: list = field(default_factory=list)       # Engine.add_peer keyword arguments


class PeerTable:
    """The peers of one engine and one data path.  ``do`` carries out the
    engine's actions (:meth:`phantom.node.executor.Executor.do`); the data
    path comes with :meth:`attach` (startup.build), before the first change."""

    def __init__(self, engine, do: Callable[[list], None], dp=None):
        self.engine = engine
        self.dp = dp
        self.do = do
        self.names = PeerNames(engine)
        self._groups: dict = {}           # peer id -> its groups (sorted tuple), peers with any
        self.on_groups: Optional[Callable[[], None]] = None   # who is in which group changed
        # the peer names and keys (base64) the firewall's rules name (the firewall slot's
        # ``peer_refs``): a peer with one of them coming or going runs ``on_groups`` too
        self.named_by_rules: Callable[[], Container] = frozenset
        self.kernel = None                # privsep.routes.KernelRoutes (TUN mode with the helper)
        self._offers: dict = {}           # peer id -> what it offers us: {"exit": True} (exit_node)
        self._extra: dict = {}            # peer id -> prefixes routed to it on top of its own (an exit in use)
        self.pruned: tuple = ([], [])     # the last change's kernel routes removed, (prefix, error)s

    # ------------------------------------------------------------ kernel routes
    def attach_kernel(self, kernel) -> None:
        """The kernel's routes from now on follow every change (``kernel``:
        :class:`phantom.privsep.routes.KernelRoutes`, or None)."""
        self.kernel = kernel

    def _route(self, prefixes: Iterable) -> list:
        """Kernel routes for ``prefixes`` before the data path uses them
        (all or nothing); ValueError naming the refused prefix.  Returns
        the routes added (for :meth:`_unroute` when the change fails)."""
        if self.kernel is None:
            return []
        from ..privsep.routes import RouteError
        try:
            return self.kernel.install(prefixes)
        except RouteError as exc:
            raise ValueError(str(exc)) from None

    def _unroute(self) -> None:
        """Remove the kernel routes no peer has any more (after the data path
        stopped using them); failures are logged and kept in ``pruned``."""
        if self.kernel is None:
            return
        self.pruned = self.kernel.prune(self.wanted())

    def wanted(self) -> list:
        """Every prefix a peer holds now (an exit in use's ``/0`` included)."""
        return [n for pe in self.engine.peers.values() for n in pe.allowed_ips]

    # ------------------------------------------------------------ what peers offer
    # A peer's permissions are data of this table, whoever gave them: a
    # [[peer]]'s ``exit_node = true`` today, a certificate's ``exit`` field
    # (the network's approval) later, through the same set_offers().
    def set_offers(self, changes: dict) -> None:
        """``changes``: {peer id: {"exit": bool, "routes": prefixes}}: what
        each peer offers us (an exit; subnets behind it, which its routes
        carry too)."""
        for pid, offers in changes.items():
            if pid not in self.engine.peers:
                raise ValueError("no peer has id %r" % (pid,))
            offers = {k: (tuple(v) if k == "routes" else v) for k, v in offers.items() if v}
            if offers:
                self._offers[pid] = offers
            else:
                self._offers.pop(pid, None)

    def offers_exit(self, peer: Peer) -> bool:
        return bool(self._offers.get(peer.id, {}).get("exit"))

    def offers_of(self, peer: Peer) -> dict:
        """What ``peer`` offers us: {"exit": True, "routes": (prefixes...)}, the true ones."""
        return dict(self._offers.get(peer.id, {}))

    def own_routes(self, peer: Peer) -> list:
        """``peer``'s own prefixes: its allowed IPs without the extra ones."""
        extra = self._extra.get(peer.id, ())
        return [n for n in peer.allowed_ips if n not in extra]

    def extra_routes(self, peer: Peer) -> tuple:
        """The prefixes routed to ``peer`` on top of its own (an exit in use: ``/0``)."""
        return tuple(self._extra.get(peer.id, ()))

    def set_extra(self, changes: dict) -> None:
        """Route ``prefixes`` to each peer of ``changes`` ({peer id:
        prefixes}) on top of its own, replacing its previous extra ones, in
        one :meth:`set_routes` step (switching an exit from one peer to
        another never leaves a moment without it); ValueError, nothing
        changed, when the engine or the kernel refuses."""
        import ipaddress
        routes, extra = {}, {}
        for pid, nets in changes.items():
            peer = self.engine.peers.get(pid)
            if peer is None:
                raise ValueError("no peer has id %r" % (pid,))
            nets = [ipaddress.ip_network(n) for n in nets]
            own = self.own_routes(peer)
            extra[pid] = tuple(n for n in nets if n not in own)
            routes[pid] = own + list(extra[pid])
        self.set_routes(routes)
        for pid, nets in extra.items():
            if nets:
                self._extra[pid] = nets
            else:
                self._extra.pop(pid, None)

    def _forget(self, pid: int) -> None:
        self._offers.pop(pid, None)
        self._extra.pop(pid, None)

    def _keep_extra(self, pid: int) -> None:
        """After ``pid``'s prefixes were replaced: its extra ones are those still there."""
        if pid in self._extra:
            have = set(self.engine.peers[pid].allowed_ips)
            left = tuple(n for n in self._extra[pid] if n in have)
            if left:
                self._extra[pid] = left
            else:
                del self._extra[pid]

    # ------------------------------------------------------------ groups
    def groups_of(self, peer: Peer) -> tuple:
        """``peer``'s firewall groups (sorted)."""
        return self._groups.get(peer.id, ())

    def group_map(self) -> dict:
        """Group name -> frozenset of the ids of the peers in it: the
        firewall compiler's input (``parse_rules(groups=...)``)."""
        out: dict = {}
        for pid, gs in self._groups.items():
            for g in gs:
                out.setdefault(g, set()).add(pid)
        return {g: frozenset(ids) for g, ids in out.items()}

    def set_groups(self, changes: dict, regroup: bool = True) -> bool:
        """Give each peer in ``changes`` ({peer id: group names}) exactly those
        groups (a member stream's delta comes through here too).  Unknown
        peer ids are a ValueError, nothing changed.  Returns whether anything
        changed; then ``on_groups`` runs (once) unless ``regroup`` is false."""
        for pid in changes:
            if pid not in self.engine.peers:
                raise ValueError("no peer has id %r" % (pid,))
        changed = False
        for pid, gs in changes.items():
            gs = tuple(sorted(set(gs)))
            if self._groups.get(pid, ()) != gs:
                changed = True
                if gs:
                    self._groups[pid] = gs
                else:
                    self._groups.pop(pid, None)
        if changed and regroup:
            self._regrouped()
        return changed

    def _regrouped(self) -> None:
        if self.on_groups is not None:
            self.on_groups()

    def _named(self, peer: Peer) -> bool:
        """Whether a firewall rule names ``peer`` (by name or key): its
        coming or going recompiles the rules."""
        refs = self.named_by_rules()
        return bool(refs) and (peer.name in refs or b64(peer.public_key) in refs)

    def attach(self, dp) -> None:
        self.dp = dp

    # ------------------------------------------------------------ lookups
    def find(self, ref: str) -> Optional[Peer]:
        """The peer called ``ref``, or whose public key (base64) is ``ref``;
        the first added if both match different peers.  Two dict lookups."""
        found = [p for p in (self.engine.peer_by_name(ref),) if p is not None]
        key = _key_of(ref)
        if key is not None:
            p = self.engine.peer_by_key(key)
            if p is not None:
                found.append(p)
        return min(found, key=lambda p: p.id) if found else None

    def free_name(self, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``... whichever no peer has."""
        taken = self.engine.peer_by_name
        if taken(name) is None:
            return name
        i = 2
        while taken("%s-%d" % (name, i)) is not None:
            i += 1
        return "%s-%d" % (name, i)

    # ------------------------------------------------------------ changes
    def add(self, public_key: bytes, name: str = "", allowed_ips: Iterable = (),
            endpoint: Optional[tuple] = None, persistent_keepalive: float = 0.0,
            groups: Iterable[str] = (), offers: Optional[dict] = None, **kw) -> Peer:
        """A new peer (``kw``: :meth:`Engine.add_peer`'s) in ``groups``;
        ValueError, nothing changed, when the engine refuses it."""
        allowed_ips = list(allowed_ips)
        if self.kernel is not None:      # the engine's verdict first: no kernel route for a refused peer
            problem = self.engine.route_problem({None: allowed_ips}, new_exclusive=bool(kw.get("exclusive")))
            if problem is not None:
                raise ValueError(problem)
        self._route(allowed_ips)
        try:
            peer = self.engine.add_peer(public_key, name, allowed_ips, endpoint, persistent_keepalive, **kw)
        except ValueError:
            self._unroute()
            raise
        self.dp.add_peer(peer.id, list(peer.allowed_ips))
        if endpoint:
            self.dp.set_endpoint(peer.id, endpoint)
        regroup = bool(groups) and self.set_groups({peer.id: groups}, regroup=False)
        if offers:
            self.set_offers({peer.id: offers})
        if regroup or self._named(peer):
            self._regrouped()
        return peer

    def remove(self, peer: Peer) -> None:
        """Forget ``peer``: its sessions end and the data path zeroes its keys
        (ClearKeys, which NAT traversal sees too), then its routes and tables go."""
        self.do(self.engine.remove_peer(peer.id))
        self.dp.remove_peer(peer.id)
        self._forget(peer.id)
        self._unroute()
        if self._groups.pop(peer.id, None) is not None or self._named(peer):
            self._regrouped()

    def update(self, peer: Peer, **fields) -> Peer:
        """Change fields of ``peer`` in place (:meth:`Engine.update_peer`: its
        sessions stay; ``groups``: :meth:`set_groups`); a new endpoint goes to
        the data path too."""
        groups = fields.pop("groups", None)
        offers = fields.pop("offers", None)
        old_name = peer.name
        if fields:
            self.engine.update_peer(peer.id, **fields)
        if "endpoint" in fields:
            self.dp.set_endpoint(peer.id, fields["endpoint"])
        regroup = groups is not None and self.set_groups({peer.id: groups}, regroup=False)
        if offers is not None:
            self.set_offers({peer.id: offers})
        renamed = peer.name != old_name and (old_name in self.named_by_rules() or self._named(peer))
        if regroup or renamed:
            self._regrouped()              # (a rule names its old or its new name)
        return peer

    def move(self, peer: Peer, endpoint: tuple) -> None:
        """The peer is at ``endpoint`` now (learnt: a directory record said
        so); a handshake that waits for an endpoint goes out at once."""
        self.do(self.engine.set_endpoint(peer.id, endpoint))

    def set_routes(self, changes: dict) -> None:
        """Give each peer in ``changes`` ({peer id: prefixes}) exactly those
        prefixes, in one step for the engine and one for the data path;
        ValueError naming the problem, nothing changed, when the engine's
        invariants would break (a prefix moves only between peers named)."""
        if self.kernel is not None:      # the engine's verdict first: no kernel route for a refused change
            problem = self.engine.route_problem(changes)
            if problem is not None:
                raise ValueError(problem)
        self._route([n for nets in changes.values() for n in nets])
        try:
            self.engine.set_allowed_ips(changes)
        except ValueError:
            self._unroute()
            raise
        self.dp.update_routes(changes)
        for pid in changes:
            self._keep_extra(pid)
        self._unroute()

    def apply(self, batch: Batch, regroup: bool = True) -> list:
        """Carry out ``batch``; returns the peers added.  Groups (a ``groups``
        field of an update or an addition) change with it; ``on_groups`` runs
        once at the end when they did, unless ``regroup`` is false (a reload
        installs its own rules after).  The engine changes
        first (removals, adoptions, prefixes, fields, additions); then the
        data path's routes change in one ``update_routes``: a removed peer's
        prefixes, a changed one's and an added one's all move at once (a
        prefix never falls through to another peer's shorter one meanwhile);
        removed peers' tables go last, with no routes left.  The kernel's
        routes the batch needs are added before anything changes (ValueError
        naming a refused one: nothing changed), those no peer has any more
        are removed at the end."""
        engine, dp = self.engine, self.dp
        regrouped = False
        self._route([n for nets in batch.routes.values() for n in nets]
                    + [n for kw in batch.add for n in kw.get("allowed_ips", ())])
        for peer in batch.remove:
            self.do(engine.remove_peer(peer.id))       # ClearKeys: the data path zeroes its keys
            regrouped |= bool(self._groups.pop(peer.id, None)) or self._named(peer)
            self._forget(peer.id)
        for peer in batch.adopt:
            engine.adopt(peer.id)
        if batch.routes:
            engine.set_allowed_ips(batch.routes)
        for peer, fields in batch.update:
            fields = dict(fields)
            groups = fields.pop("groups", None)
            offers = fields.pop("offers", None)
            if offers is not None:
                self.set_offers({peer.id: offers})
            if fields:
                engine.update_peer(peer.id, **fields)
            if "endpoint" in fields:
                dp.set_endpoint(peer.id, fields["endpoint"])
            if groups is not None:
                regrouped |= self.set_groups({peer.id: groups}, regroup=False)
        added, routes = [], dict(batch.routes)
        for kw in batch.add:
            kw = dict(kw)
            groups = kw.pop("groups", ())
            offers = kw.pop("offers", None)
            peer = engine.add_peer(**kw)
            if offers:
                self.set_offers({peer.id: offers})
            if groups:
                regrouped |= self.set_groups({peer.id: groups}, regroup=False)
            regrouped |= self._named(peer)
            dp.add_peer(peer.id, [])                   # its routes come with everyone's below
            routes[peer.id] = list(peer.allowed_ips)
            if peer.endpoint:
                dp.set_endpoint(peer.id, peer.endpoint)
            added.append(peer)
        routes.update({peer.id: [] for peer in batch.remove})
        if routes:
            dp.update_routes(routes)
        for pid in batch.routes:
            self._keep_extra(pid)
        for peer in batch.remove:
            dp.remove_peer(peer.id)                    # no routes left: keys and tables only
        self._unroute()
        if regrouped and regroup:
            self._regrouped()
        return added
