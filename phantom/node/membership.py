"""The member daemon (issue 20 item 4): phantomd acting on ``[network]``.

What ``phantom join`` left in the state directory (``definition.json``,
``certificate.json``) makes this node a member of a network; this module
makes the rest of the network its peers, by itself:

* **start** (:func:`load_identity`): the definition is verified against the
  fingerprint in ``[network]`` and our certificate against the definition and
  our own key; a missing, expired, removed or foreign certificate stops the
  start with a sentence that says so (exit 2, like any config error);
* **the member stream** (memberstream.py, :meth:`MemberStream.follow`): ``GET
  /network/members`` once (a snapshot) when nothing is cached, then ``GET
  /network/members?since=SEQ`` about every second (pages while ``more``),
  each event applied to the member set (:mod:`phantom.network.members`:
  verified, conflicts settled, one event at a time: a change costs what it
  touches).  Ops this module does not handle (``policy`` later) go to
  :attr:`Membership.handlers`, a table others register in.  A directory that
  does not answer is retried with a backoff capped at 5 s (memberstream.py)
  (every URL in turn); the node keeps working meanwhile;
* **members are peers through the peer door** (:class:`~phantom.node.peers.PeerTable`):
  allowed IPs exactly the certificate's addresses (and approved routes),
  groups from the certificate (``set_groups``: the firewall's
  ``src_group``/``dst_group`` follow), no endpoint until one is known; a
  removal or an expiry removes the peer (its keys are zeroed);
* **endpoints on demand**: the directory link (dirlink.py) publishes our
  signed record (name = the certificate's name) and follows the members'
  records; when traffic waits for a member whose endpoint is unknown the
  record is looked up by key at once (bounded retries) and the handshake
  goes out (:meth:`PeerTable.move`).  Only a record's endpoints are used,
  never its allowed IPs;
* **the cache** (``STATE/members.json``, atomic): the member set with its
  removals, seq and last known endpoints; loaded (every certificate verified
  again, expired ones dropped) at start, so a restart reconnects while the
  directory is down, and the stream resumes from the cached seq;
* **admission from the handshake** (:meth:`Membership.admit_unknown`, set as
  ``engine.admit_unknown``; ``engine.membership`` carries our certificate);
* **renewal** at 2/3 of the certificate's lifetime (``POST /network/renew``).

Why polling and not a stream: the directory serves the member events as
pages (``GET /network/members?since=N``); a page with nothing new is one
small request a second.  A streaming watch (``POST /network/watch``, not
built in the directory yet) would cut the delay from about a second to the
network's round trip and the idle requests to none; the follower's event
handling would not change (:meth:`Membership.apply_page`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import stat
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from .. import crypto
from ..control import actions as A
from ..control.peer import PeerState
from ..dataplane.udp import format_endpoint, plain
from ..directory.records import NodeSigner
from ..errors import ConfigError
from ..network.canonical import b64
from ..network.certificate import Certificate, verify_certificate
from ..network.definition import is_newer, parse_definition
from ..network.errors import FormatError, NetworkError, Reason, Refused
from ..network.keys import atomic_write, read_limited
from ..network.join import make_renew_request
from ..network.members import OPS, MemberSet
from ..network.names import endpoint as member_endpoint
from ..syntax import parse_endpoint
from .executor import Observer
from .memberstream import MemberStream

log = logging.getLogger("phantom.daemon")

SAVE_EVERY = 1.0                 # the cache is written at most this often
RESOLVE_TRIES = 6                # lookups of a member's endpoint for one waiting handshake
RESOLVE_MAX_WAIT = 2.0
SERVER_KEEPALIVE = 25.0          # persistent keepalive to the definition's rendezvous nodes
KNOCK_MEMORY = 10.0              # seconds an unknown key's initiation is remembered
MAX_KNOCKS = 1024
RENEW_FRACTION = 2 / 3           # renew at this fraction of the certificate's lifetime
CACHE_DIR = "cache"               # STATE/cache: what the daemon writes (owned by its run user)
CACHE_FILE = "members.json"
POLICY_FILE = "policy.json"       # the network policy in force (issue 21)
DEFINITION_FILE = "definition.json"
CERTIFICATE_FILE = "certificate.json"
MAX_FILE = 64 * 1024
MAX_CACHE = 64 * 1024 * 1024     # the member cache (the member set's own limit)


# --------------------------------------------------------------------------- start-up
def load_identity(state: Path, fingerprint: str, public_key: bytes, now: float,
                  cert_path: Optional[Path] = None) -> tuple:
    """(Definition, Certificate) from ``state``, verified: the definition
    against ``fingerprint``, the certificate against the definition, ``now``
    and our ``public_key``.  ConfigError with a sentence that says what is
    wrong and what to do."""
    state = Path(state)
    where = "network.state"
    def_path = state / DEFINITION_FILE
    cert_path = cert_path or state / CERTIFICATE_FILE
    try:
        raw_def = read_limited(def_path, MAX_FILE)
    except FileNotFoundError:
        raise ConfigError(where, "%s has no %s: run `phantom join TOKEN` on this machine"
                          % (state, DEFINITION_FILE)) from None
    except (OSError, NetworkError) as exc:
        raise ConfigError(where, "cannot read %s: %s" % (def_path, exc)) from None
    try:
        definition = parse_definition(raw_def.strip(), fingerprint)
    except NetworkError as exc:
        raise ConfigError(where, "%s: %s (the [network] section names network %s)"
                          % (def_path, exc, fingerprint)) from None
    try:
        raw_cert = read_limited(cert_path, MAX_FILE)
    except FileNotFoundError:
        raise ConfigError(where, "%s has no %s: this machine is not a member of %s; run "
                          "`phantom join TOKEN`" % (state, CERTIFICATE_FILE, definition.name)) \
            from None
    except (OSError, NetworkError) as exc:
        raise ConfigError(where, "cannot read %s: %s" % (cert_path, exc)) from None
    try:
        cert = verify_certificate(raw_cert, definition, now, key=public_key)
    except Refused as exc:
        hint = {Reason.EXPIRED: ": join again with a new invite (`phantom join TOKEN`)",
                Reason.WRONG_KEY: ": it belongs to another machine's key (this node's key is %s)"
                % b64(public_key),
                Reason.WRONG_NETWORK: " (the certificate is not for %s)" % definition.name,
                }.get(exc.reason, "")
        raise ConfigError(where, "%s: %s%s" % (cert_path, exc, hint)) from None
    return definition, cert


def read_nofollow(path: Path, max_size: int) -> bytes:
    """A file of the cache directory (which the daemon's unprivileged user
    owns), read at start as root: never through a symbolic link, never more
    than ``max_size`` bytes (FormatError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_size + 1)
    if len(data) > max_size:
        raise FormatError("%s is larger than %d bytes" % (path, max_size))
    return data


def renew_time(cert: Certificate) -> float:
    """When a certificate is renewed: at 2/3 of its lifetime."""
    return cert.not_before + (cert.not_after - cert.not_before) * RENEW_FRACTION


# --------------------------------------------------------------------------- the member
class Membership(Observer):
    """This node's membership of one network, wired into a daemon (see the
    module documentation).  ``daemon`` gives ``engine``, ``peers`` (the peer
    door), ``executor``, ``directory`` (the directory link, for endpoints) and
    ``shutdown``; the constructor does no I/O beyond reading the state
    directory, and raises ConfigError when this node cannot be a member."""

    def __init__(self, daemon, section, private_key: bytearray,
                 clock: Callable[[], float] = time.time):
        self.d = daemon
        self.section = section
        self.state = Path(section.state)
        self.clock = clock
        self._key = private_key          # a copy of ours (renewal signs with it), wiped at close()
        self.public_key = bytes(daemon.engine.public_key)
        self.cache = self.state / CACHE_DIR
        self._dirfd: Optional[int] = None          # the cache directory, opened before the drop
        try:
            self.definition, self.cert = load_identity(self.state, section.network,
                                                       self.public_key, clock())
        except ConfigError as exc:
            # join's certificate may have expired while a renewed one is in the cache
            try:
                self.definition, self.cert = load_identity(
                    self.state, section.network, self.public_key, clock(),
                    cert_path=self.cache / CERTIFICATE_FILE)
            except ConfigError:
                raise exc from None
        self._take_cached_identity()
        if section.name != self.definition.name:
            log.warning("network: [network] name is %r, the definition says %r",
                        section.name, self.definition.name)
        self.members = self._load_cache()
        if self.members.is_removed(self.public_key):
            raise ConfigError("network.state", "this node (%s) was removed by the network %s"
                              % (self.cert.name, self.definition.name))
        #: op -> fn(event dict): events this module does not handle itself
        #: (``policy``...); a handler's exception is logged and counted.
        self.handlers: dict = {"policy": self._on_policy_event}
        self.stats: Counter = Counter()
        self._peer_ids: dict = {}        # member key -> peer id (peers this module added)
        self._regroup_due = False        # members' groups changed: recompile the rules once
        self._in_page = False
        self._servers: dict = {}         # the definition's rendezvous/relays: key -> peer id
        self._dirty = False
        self._saved_at = float("-inf")
        self._tasks: set = set()
        self._resolving: set = set()     # keys whose endpoint is being looked up
        self._knocks: dict = {}          # unknown key -> (addr, monotonic time) of its initiation
        self.poll_now: Optional[asyncio.Event] = None    # a knock: poll the stream at once
        self.stream = None               # memberstream.MemberStream, made at start()
        self.directory_ok: Optional[bool] = None   # the last poll reached a directory
        self.last_poll_error: Optional[str] = None
        from .netroutes import NetworkRoutes
        self.routes = NetworkRoutes(self)   # approved subnet routes and exits (issue 22)
        self._warn_own_addresses()

    # ------------------------------------------------------------ start-up
    def _warn_own_addresses(self) -> None:
        have = {a.ip for a in getattr(self.d.s, "addresses", ())}
        missing = [str(a) for a in (self.cert.ipv4, self.cert.ipv6) if a not in have]
        if missing:
            log.warning("network: the certificate's addresses %s are not in [interface] "
                        "addresses: members will not reach this node there", ", ".join(missing))

    def _take_cached_identity(self) -> None:
        """A newer definition or certificate the daemon wrote to the cache
        (a ``network`` event, a renewal) than what ``phantom join`` wrote;
        each verified like the originals (a bad one is ignored, logged)."""
        now = self.clock()
        try:
            d2 = parse_definition(read_nofollow(self.cache / DEFINITION_FILE, MAX_FILE).strip(),
                                  self.section.network)
            if is_newer(self.definition, d2):
                cert = verify_certificate(self.cert.doc, d2, now, key=self.public_key)
                self.definition, self.cert = d2, cert
        except FileNotFoundError:
            pass
        except (OSError, NetworkError) as exc:
            log.warning("network: the cached definition is not used: %s", exc)
        try:
            c2 = verify_certificate(read_nofollow(self.cache / CERTIFICATE_FILE, MAX_FILE),
                                    self.definition, now, key=self.public_key)
            if c2.version > self.cert.version:
                self.cert = c2
                log.info("network: using the renewed certificate from the cache (serial %d)",
                         c2.serial)
        except FileNotFoundError:
            pass
        except (OSError, NetworkError) as exc:
            log.warning("network: the cached certificate is not used: %s", exc)

    def prepare_cache(self, drop_to=None) -> None:
        """Before the privilege drop: STATE/cache (0700) owned by the user
        the daemon will run as, opened now, so the daemon writes its cache
        there after the drop (the state directory stays root's)."""
        try:
            os.mkdir(self.cache, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(self.cache)
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError("network.state", "%s is not a directory" % self.cache)
        fd = os.open(self.cache, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        if drop_to is not None:
            uid, gid = drop_to.pw_uid, drop_to.pw_gid
            os.fchown(fd, uid, gid)
            for name in os.listdir(fd):
                try:
                    os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    pass
        os.fchmod(fd, 0o700)
        self._dirfd = fd

    def _load_cache(self) -> MemberSet:
        path = self.cache / CACHE_FILE
        if not path.exists():
            return MemberSet(self.definition, self.clock)
        try:
            ms = MemberSet.from_snapshot(read_nofollow(path, MAX_CACHE), self.definition,
                                         self.clock)
        except (OSError, NetworkError) as exc:
            log.warning("network: the member cache %s is not usable (%s): starting from the "
                        "directory's snapshot", path, exc)
            return MemberSet(self.definition, self.clock)
        dropped = sum(v for k, v in ms.stats.items() if k.startswith("dropped_"))
        log.info("network: %d members of %s from the cache (seq %d%s)", len(ms),
                 self.definition.name, ms.seq,
                 ", %d no longer valid dropped" % dropped if dropped else "")
        return ms

    def install(self) -> None:
        """Make every known member a peer (the cache's, at start; after the
        configured peers, through the peer door), and hand the engine our
        certificate and the admission function (the handshake's interface)."""
        engine = self.d.engine
        engine.membership = self.cert.encode()
        engine.admit_unknown = self.admit_unknown
        engine.report_unknown_keys = True    # an unknown key's initiation: see observe()
        self._install_servers()
        for m in list(self.members):
            self._add_peer(m)
        self.routes.refresh()
        self.regroup()
        self._load_cached_policy()

    def servers(self) -> list:
        """The definition's rendezvous and relays as (key, (host, port)), once
        each, never ourselves; an endpoint that is not an IP literal is skipped
        (logged)."""
        out, seen = [], set()
        for srv in tuple(self.definition.rendezvous) + tuple(self.definition.relays):
            key = bytes(srv.key)
            if key == self.public_key or key in seen:
                continue
            seen.add(key)
            try:
                out.append((key, parse_endpoint(srv.endpoint)))
            except Exception as exc:
                log.warning("network: rendezvous %s at %s not used: %s", b64(key), srv.endpoint, exc)
        return out

    def server_keys(self) -> list:
        """Keys of the rendezvous nodes NAT traversal asks (nat.attach)."""
        return list(self._servers)

    def _install_servers(self) -> None:
        """The definition's rendezvous and relays become peers with their
        endpoint and a persistent keepalive (NAT traversal for members works as
        for configured rendezvous peers); a server that is also a member gets
        its certificate's addresses and groups when the member set has it."""
        d = self.d
        for key, endpoint in self.servers():
            peer = d.engine.peer_by_key(key)
            if peer is None:
                try:
                    peer = d.peers.add(key, d.peers.free_name("rendezvous"), [], endpoint,
                                       SERVER_KEEPALIVE, dynamic=True)   # (a reload keeps it)
                except ValueError as exc:
                    log.warning("network: rendezvous %s not added: %s", b64(key), exc)
                    continue
                log.info("network: rendezvous %s at %s (from the definition)", peer.name,
                         "%s:%d" % endpoint)
            self._servers[key] = peer.id

    def directory_options(self) -> dict:
        """What the directory link publishes and where, for a member that has
        no ``[interface] directory`` of its own."""
        return {"urls": list(self.section.directory), "name": self.cert.name,
                "allowed": [str(n) for n in self.cert.addresses], "auto": True}

    # ------------------------------------------------------------ the peer door
    def _endpoint_of(self, member) -> Optional[tuple]:
        for text in member.endpoints:
            try:
                return parse_endpoint(text)
            except Exception:            # a name, or garbage: not an endpoint to send to
                continue
        return None

    def _add_peer(self, member) -> None:
        key = member.key
        if key == self.public_key:
            return
        d = self.d
        existing = d.engine.peer_by_key(key)
        if existing is not None and self._servers.get(key) == existing.id \
                and key not in self._peer_ids:
            # a rendezvous of the definition that is a member too: its addresses and groups
            cert = member.cert
            try:
                d.peers.set_routes({existing.id: list(cert.addresses)})   # routes: refresh()
                self._set_groups(existing.id, cert.groups)
            except ValueError as exc:
                log.warning("network: member %s (the rendezvous) keeps no addresses: %s",
                            cert.name, exc)
                return
            self._peer_ids[key] = existing.id
            self.stats["peers_added"] += 1
            log.info("network: member %s (%s, %s) is the rendezvous peer %s", cert.name,
                     cert.ipv4, cert.ipv6, existing.name)
            return
        if existing is not None:
            if key not in self._peer_ids:
                log.info("network: member %s is a configured peer (%s): kept as configured",
                         member.name, existing.name)
            return
        cert = member.cert
        try:
            # its addresses; approved routes follow in routes.refresh() (a route
            # another peer holds then costs the route, never the member)
            peer = d.peers.add(key, d.peers.free_name(cert.name), list(cert.addresses),
                               self._endpoint_of(member), dynamic=True, exclusive=True)
        except ValueError as exc:
            self.stats["peer_refused"] += 1
            log.warning("network: member %s (%s) not added as a peer: %s", cert.name, b64(key), exc)
            return
        self._peer_ids[key] = peer.id
        self.stats["peers_added"] += 1
        self._set_groups(peer.id, cert.groups)
        self._names_changed()
        knock = self._knocks.pop(key, None)
        if knock is not None and time.monotonic() - knock[1] < KNOCK_MEMORY:
            # it initiated to us before we knew it (its first packet waits there):
            # handshake back now rather than let it wait for its retry
            if peer.endpoint is None:
                d.peers.move(peer, plain(knock[0]))
            d.executor.do(d.engine.handshake_needed(peer.id))
            self.stats["knocks_answered"] += 1
        log.info("network: member %s (%s, %s) is a peer%s", cert.name, cert.ipv4, cert.ipv6,
                 (" in groups " + ",".join(cert.groups)) if cert.groups else "")

    def _peer(self, key: bytes):
        pid = self._peer_ids.get(key)
        return self.d.engine.peers.get(pid) if pid is not None else None

    member_peer = _peer                  # the member ``key``'s peer, or None (netroutes.py)

    def _remove_peer(self, key: bytes, why: str) -> None:
        peer = self._peer(key)
        self._peer_ids.pop(key, None)
        if peer is None:
            return
        if self._servers.get(key) == peer.id:
            # the definition's rendezvous stays a rendezvous, without a member's addresses
            self.d.peers.set_routes({peer.id: []})
            self.d.peers.set_groups({peer.id: ()})
            log.info("network: member %s %s: it stays a rendezvous only", peer.name, why)
            return
        self.d.peers.remove(peer)
        self._names_changed()
        self.stats["peers_removed"] += 1
        log.info("network: member %s %s: its peer and tunnels are gone", peer.name, why)

    def sync(self, changes: list) -> None:
        """Carry the member set's changes to the peer door."""
        for ch in changes:
            if ch.key == self.public_key:
                if ch.new is not None and ch.new.cert.version > self.cert.version:
                    # our own certificate reissued (the admin approved or revoked
                    # routes or exit, issue 22): use it as a renewal's
                    self.use_certificate(ch.new.cert, "reissued by the network")
                if ch.kind == "removed" and self.members.is_removed(self.public_key):
                    log.error("network: this node (%s) was removed by the network %s: members "
                              "refuse it from now on", self.cert.name, self.definition.name)
                continue
            if ch.kind == "added":
                self._add_peer(ch.new)
            elif ch.kind == "removed":
                self._remove_peer(ch.key, "removed by the network" if self.members.is_removed(ch.key)
                                  else "is no longer a member (expired or replaced)")
            elif ch.kind == "updated":
                peer = self._peer(ch.key)
                if peer is None:
                    self._add_peer(ch.new)
                    continue
                cert = ch.new.cert
                try:
                    # its routes follow in routes.refresh() below, with everyone's
                    self._set_groups(peer.id, cert.groups)
                except ValueError as exc:
                    log.warning("network: member %s's new certificate not applied: %s",
                                cert.name, exc)
                    self._remove_peer(ch.key, "has a certificate this node cannot apply")
            elif ch.kind == "endpoints":
                peer = self._peer(ch.key)
                ep = self._endpoint_of(ch.new)
                if peer is not None and ep is not None and peer.endpoint is None:
                    self.d.peers.move(peer, ep)
        if changes:
            self.routes.refresh()
        if not self._in_page:
            self.regroup()
        if changes:
            self._dirty = True

    def _set_groups(self, peer_id: int, groups) -> None:
        """A member peer's groups, without recompiling the rules yet
        (:meth:`regroup` does it once for a whole page of changes)."""
        if self.d.peers.set_groups({peer_id: groups}, regroup=False):
            self._regroup_due = True

    def regroup(self) -> None:
        """Recompile the firewall's groups once if members' groups changed."""
        if self._regroup_due:
            self._regroup_due = False
            if self.d.peers.on_groups is not None:
                self.d.peers.on_groups()

    # ------------------------------------------------------------ the network policy
    # (phantom/node/policy.py compiles it; issue 21): the snapshot's ``policy``
    # and ``{"op": "policy"}`` events, cached in STATE/cache/policy.json
    def _names_changed(self) -> None:
        """A member peer came or went: a policy naming members (``member:``,
        ``key:``) is resolved to peer ids when the rules compile, so they
        compile again (once per page, like a group change)."""
        firewall = getattr(self.d, "firewall", None)
        if firewall is not None and firewall.policy is not None:
            self._regroup_due = True

    def _on_policy_event(self, ev: dict) -> None:
        self.take_policy(ev.get("policy"))

    def take_policy(self, doc: Any, cache: bool = True) -> bool:
        """A signed policy from the directory (or the cache): verified against
        the definition, compiled for this node and swapped into the firewall in
        place; one not newer than the policy in force is ignored.  False (and
        nothing changed, logged, counted) when it is refused."""
        from . import policy as node_policy
        try:
            p = node_policy.apply_policy(self.d.firewall, doc, self.definition, self.cert,
                                         self.clock())
        except Refused as exc:
            if exc.reason is Reason.STALE:
                self.stats["policy_stale"] += 1
                return False
            self.stats["policy_refused"] += 1
            log.warning("network: a policy was refused: %s", exc)
            return False
        except (NetworkError, ValueError) as exc:
            self.stats["policy_refused"] += 1
            log.warning("network: a policy was refused: %s", exc)
            return False
        self.stats["policies"] += 1
        if cache:
            self._write(POLICY_FILE, p.encode() + b"\n")
        return True

    def _load_cached_policy(self) -> None:
        try:
            raw = read_nofollow(self.cache / POLICY_FILE, MAX_FILE)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("network: the cached policy is not used: %s", exc)
            return
        if self.take_policy(raw, cache=False):
            log.info("network: the cached network policy is in force until the directory answers")

    # ------------------------------------------------------------ the stream (sans-IO)
    def apply_page(self, page: Any) -> list:
        """One answer of ``GET /network/members``: a snapshot (``members``) or
        a page of events (``events``).  Returns the member set's changes (also
        carried to the peer door) and raises ValueError for an answer that is
        not one (nothing applied).  An event that fails verification is
        counted and skipped (the stream goes on)."""
        if not isinstance(page, dict) or not isinstance(page.get("seq"), int) \
                or isinstance(page.get("seq"), bool):
            raise ValueError("not a member-stream answer")
        if "members" in page:
            return self._apply_snapshot(page)
        events = page.get("events")
        if not isinstance(events, list):
            raise ValueError("not a member-stream answer (no events)")
        changes = []
        self._in_page = True             # the firewall's groups recompile once, at the end
        try:
            for ev in events:
                changes += self.apply_event(ev)
        finally:
            self._in_page = False
            self.regroup()
        return changes

    def _apply_snapshot(self, page: dict) -> list:
        if page.get("network") != self.definition.fingerprint:
            raise ValueError("a snapshot of another network (%r)" % (page.get("network"),))
        members, removals = page.get("members"), page.get("removals")
        if not isinstance(members, list) or not isinstance(removals, list):
            raise ValueError("malformed snapshot")
        old = {m.key: m.endpoints for m in self.members}
        items = [(doc, list(old.get(self._cert_key(doc), ()))) for doc in members]
        changes = self.members.reset(items, removals, page["seq"])
        self.stats["snapshots"] += 1
        self.sync(changes)
        if page.get("policy") is not None:
            self.take_policy(page["policy"])
        self._dirty = True
        return changes

    @staticmethod
    def _cert_key(doc: Any) -> bytes:
        try:
            return base64.b64decode(doc.get("key", ""), validate=True)
        except Exception:
            return b""

    def apply_event(self, ev: Any) -> list:
        """One event of the member stream (see :meth:`apply_page`)."""
        ms = self.members
        if not isinstance(ev, dict):
            self.stats["bad_events"] += 1
            return []
        seq, op = ev.get("seq"), ev.get("op")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            self.stats["bad_events"] += 1
            return []
        if seq <= ms.seq:
            self.stats["stale_events"] += 1
            return []
        if op in self.handlers:
            ms.seq = seq
            try:
                self.handlers[op](ev)
            except Exception as exc:     # another module's handler: log, count, go on
                self.stats["handler_errors"] += 1
                log.warning("network: the %s handler failed on event %d: %s", op, seq, exc)
            self._dirty = True
            return []
        if op not in OPS:
            ms.seq = seq
            self.stats["unhandled_events"] += 1
            log.info("network: event %d has op %r, which nothing here handles: skipped", seq, op)
            return []
        try:
            changes = ms.apply(ev)
        except NetworkError as exc:
            ms.seq = max(ms.seq, seq)
            self.stats["refused_events"] += 1
            log.warning("network: event %d (%s) refused: %s", seq, op, exc)
            self._dirty = True
            return []
        if op == "network":
            self.definition = ms.definition
            self._write(DEFINITION_FILE, self.definition.encode() + b"\n")
        self.sync(changes)
        self._dirty = True
        return changes

    def expire(self) -> list:
        changes = self.members.expire()
        self.sync(changes)
        return changes

    def save(self, force: bool = False) -> bool:
        """Write the cache if something changed (at most every SAVE_EVERY s)."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._saved_at < SAVE_EVERY):
            return False
        if not self._write(CACHE_FILE, self.members.snapshot()):
            return False
        self._dirty = False
        self._saved_at = now
        return True

    def _write(self, name: str, data: bytes) -> bool:
        """Write STATE/cache/``name`` atomically (a temporary file, fsync,
        rename, fsync of the directory), through the directory opened before
        the drop when there is one."""
        try:
            if self._dirfd is None:
                self.cache.mkdir(mode=0o700, exist_ok=True)
                atomic_write(self.cache / name, data)
                return True
            tmp = ".%s.%d.tmp" % (name, os.getpid())
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600,
                         dir_fd=self._dirfd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self._dirfd, dst_dir_fd=self._dirfd)
            os.fsync(self._dirfd)
            return True
        except OSError as exc:
            log.warning("network: cannot write %s: %s", self.cache / name, exc)
            return False

    # ------------------------------------------------------------ admission (handshake)
    def admit_unknown(self, remote_static: bytes, certificate: bytes, addr) -> Optional[str]:
        """An initiation from a key we do not know carried ``certificate``:
        None when it is a member's (now a peer, through the peer door), or the
        refusal sentence to answer with ("not a member of corp", "certificate
        expired", "removed by the network")."""
        key = bytes(remote_static)
        net = self.definition.name
        if key == self.public_key:
            return "not a member of %s" % net
        try:
            cert, changes = self.members.admit(bytes(certificate), key=key)
        except Refused as exc:
            self.stats["admit_refused_" + exc.code] += 1
            return exc.headline
        except (NetworkError, ValueError, TypeError):
            self.stats["admit_refused_malformed"] += 1
            return "not a member of %s" % net
        if key not in self.members:
            holder = self.members.owner(cert.ipv4) or self.members.by_name(cert.name)
            self.stats["admit_refused_conflict"] += 1
            return "not a member of %s (%s holds its address or name)" % (
                net, holder.name if holder is not None else "another member")
        self.sync(changes)
        if self.d.engine.peer_by_key(key) is None:
            self._add_peer(self.members.member(key))
            self.regroup()
        if self.d.engine.peer_by_key(key) is None:
            self.stats["admit_refused_peer"] += 1
            return "not a member of %s (this node cannot add it as a peer)" % net
        self.stats["admitted_from_handshake"] += 1
        return None

    # ------------------------------------------------------------ endpoints on demand
    def handshake_needed(self, peer_id: int) -> list:
        peer = self.d.engine.peers.get(peer_id)
        if peer is not None and peer.endpoint is None and self._peer_ids.get(peer.public_key) == peer_id:
            self._resolve_soon(peer.public_key)
        return []

    def observe(self, act) -> list:
        if isinstance(act, A.SetEndpoint) and act.addr is not None:
            peer = self.d.engine.peers.get(act.peer_id)
            if peer is not None and self._peer_ids.get(peer.public_key) == peer.id:
                self._remember_endpoint(peer.public_key, act.addr)
        elif isinstance(act, A.StateChanged) and act.new == "handshaking":
            self.handshake_needed(act.peer_id)
        elif isinstance(act, A.UnknownKey):
            self._knocked(bytes(act.public_key), act.addr)
        return []

    def _knocked(self, key: bytes, addr) -> None:
        """An initiation from a key we have no peer for: perhaps a member
        that joined since our last poll.  Remembered for KNOCK_MEMORY s (at
        most MAX_KNOCKS keys), and the stream is polled at once."""
        now = time.monotonic()
        if len(self._knocks) >= MAX_KNOCKS:
            self._knocks = {k: v for k, v in self._knocks.items() if now - v[1] < KNOCK_MEMORY}
            if len(self._knocks) >= MAX_KNOCKS:
                return
        self._knocks[key] = (addr, now)
        if key not in self.members and self.poll_now is not None:
            self.poll_now.set()

    def _remember_endpoint(self, key: bytes, addr) -> None:
        try:
            # an address and port only: a relayed path ("relay:...") is no endpoint to
            # cache (the cache's loader would refuse it; NAT traversal finds the relay)
            text = member_endpoint(format_endpoint(plain(addr)))
        except Exception:
            return
        m = self.members.member(key)
        if m is None or (m.endpoints and m.endpoints[0] == text):
            return
        eps = (text,) + tuple(e for e in m.endpoints if e != text)
        self.members.set_endpoints(key, eps[:4])
        self._dirty = True

    def _resolve_soon(self, key: bytes) -> None:
        if key in self._resolving or self.d.directory is None or self._servers:
            return                       # (with rendezvous nodes, NAT traversal finds it)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._resolving.add(key)
        task = loop.create_task(self._resolve(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, key: bytes) -> None:
        """Look a member's record up by key until it gives an endpoint (or
        RESOLVE_TRIES fail); then the handshake goes out at once."""
        try:
            for attempt in range(RESOLVE_TRIES):
                peer = self._peer(key)
                if peer is None or peer.endpoint is not None:
                    return
                try:
                    rec = await self.d.directory.resolve(key=key)
                except Exception as exc:
                    rec = None
                    log.debug("network: looking up %s: %s", b64(key), exc)
                peer = self._peer(key)
                if peer is None or peer.endpoint is not None:
                    return
                if rec is not None and rec.endpoints and not rec.revoked:
                    self.stats["endpoints_resolved"] += 1
                    log.info("network: member %s is at %s (its directory record)", peer.name,
                             format_endpoint(rec.endpoints[0]))
                    self.d.peers.move(peer, plain(rec.endpoints[0]))
                    return
                await asyncio.sleep(min(RESOLVE_MAX_WAIT, 0.25 * 2 ** attempt))
            self.stats["endpoints_unresolved"] += 1
        finally:
            self._resolving.discard(key)

    # ------------------------------------------------------------ the loops (I/O)
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.stream = MemberStream(self)
        for coro in (self.stream.follow(), self.stream.keep_renewed(),
                     self.stream.keep_advertised()):
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("network: member %s of %s (%s, %s), certificate until %s; following %s",
                 self.cert.name, self.definition.name, self.cert.ipv4, self.cert.ipv6,
                 time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.cert.not_after)),
                 ", ".join(self.section.directory))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self.save(force=True)
        crypto.memzero(self._key)
        if self._dirfd is not None:
            os.close(self._dirfd)
            self._dirfd = None

    # ------------------------------------------------------------ renewal
    def renew_due(self, now: float) -> bool:
        return now >= renew_time(self.cert)

    def renews_at(self) -> float:
        return renew_time(self.cert)

    def renewal_request(self) -> dict:
        """A renewal request signed with our key (POST /network/renew)."""
        signer = NodeSigner(self._key)
        try:
            return make_renew_request(self.definition.fingerprint, self.public_key,
                                      signer.signing_key, signer.sign, self.clock())
        finally:
            signer.wipe()

    def advertisement_request(self, routes, exit: bool) -> dict:
        """This member's advertisement of routes and exit, signed with our key
        (POST /network/advertise, network/routes.py)."""
        from ..network.routes import make_advertisement
        signer = NodeSigner(self._key)
        try:
            return make_advertisement(self.definition.fingerprint, self.public_key,
                                      signer.signing_key, signer.sign, routes, exit, self.clock())
        finally:
            signer.wipe()

    async def renew_once(self) -> Certificate:
        """Renew now (the API's POST /network/renew); ValueError/OSError when not renewed."""
        if self.stream is None:
            raise ValueError("the daemon is not serving yet")
        return await self.stream.renew_once()

    def use_certificate(self, cert: Certificate, how: str = "renewed") -> None:
        self._write(CERTIFICATE_FILE, cert.encode())
        self.cert = cert
        self.d.engine.membership = cert.encode()
        firewall = getattr(self.d, "firewall", None)
        if firewall is not None and firewall.policy is not None:
            from .policy import set_identity
            set_identity(firewall, cert)          # the policy compiled for the new groups
        try:
            self.sync(self.members.admit(cert.doc, key=self.public_key)[1])
        except NetworkError:
            pass
        log.info("network: certificate %s: serial %d, valid until %s%s", how, cert.serial,
                 time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(cert.not_after)),
                 "; routes %s%s" % (", ".join(map(str, cert.routes)) or "none",
                                    ", exit" if cert.exit else "")
                 if cert.routes or cert.exit else "")
        self.routes.own()

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        c = self.cert
        return {"network": self.definition.name, "fingerprint": self.definition.fingerprint,
                "domain": self.definition.domain, "name": c.name,
                "addresses": [str(c.ipv4), str(c.ipv6)], "groups": list(c.groups),
                "certificate_serial": c.serial, "certificate_expires": c.not_after,
                "renews_at": int(renew_time(c)),
                "seq": self.members.seq, "members": len(self.members),
                "member_peers": len(self._peer_ids),
                "directory": list(self.section.directory), "directory_ok": self.directory_ok,
                "last_error": self.last_poll_error, "stats": dict(self.stats),
                "member_set": dict(self.members.stats), "routes": self.routes.status()}

    def record_endpoint_wanted(self, peer) -> bool:
        """Whether a directory record's endpoint may move ``peer`` (the
        directory link asks).  Not for a member whose session is up (its
        working path stays: behind a NAT its record names its LAN address,
        which only its own side of the NAT reaches), nor for any member when
        the network has rendezvous nodes (NAT traversal finds members then,
        LAN addresses included, and an unverified endpoint would count as a
        direct path and keep it from falling back to a relay)."""
        if not self.is_member_peer(peer):
            return True
        return not self._servers and peer.state is not PeerState.ESTABLISHED

    def is_member_peer(self, peer) -> bool:
        return self._peer_ids.get(peer.public_key) == peer.id
