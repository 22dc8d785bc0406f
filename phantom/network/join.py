"""The join transaction's server side, and the other admission steps, sans-IO.

``phantom join TOKEN`` sends a **join request**: the invite's id and secret,
the node's X25519 key, its Ed25519 form (``signing_key``, what
:class:`~phantom.directory.records.NodeSigner` derives from the
private key) and a signature under it, so the request proves possession of
the key it enrols (a stolen invite cannot enrol someone else's key)::

    {"invite":"<16 base32>","key":"<X25519>","name":"laptop","net":"<fingerprint>",
     "secret":"<32 bytes, base64>","sig":"<Ed25519>","signing_key":"<Ed25519>",
     "time":1760000000,"v":1}

The signature is over ``JOIN_DOMAIN || canonical JSON minus "sig"``;
``time`` must be within MAX_REQUEST_SKEW of the server's clock; ``name`` may
be null (then the invite must name the member).

:func:`join` runs inside ONE store transaction (the :class:`Ledger` is the
store's view of it): it verifies the request, redeems a use of the invite,
checks the name, allocates the lowest free addresses, signs the certificate
with the admission key and records the member and a ``member`` event of the
watch stream.  Every check comes before the first write, so a refusal leaves
the ledger as it was even without a transaction; a store with unique
constraints on name and addresses turns a concurrent front end's race into a
failed insert and retries (issue 20, "50 concurrent joins").

The directory answers with :func:`join_answer` (the definition and the
certificate); the joining machine checks it with :func:`accept_join_answer`
(the definition must be the token's network's, the certificate for its own
key).  A member renews with a request of the same kind without the invite
(:func:`make_renew_request`, :func:`renew`: same name, addresses, groups and
``since``).  The same module issues removals (:func:`remove`: a signed
removal and a ``removed`` event) and manages invites (:func:`add_invite`,
:func:`revoke_invite`).  The clock is always passed in.

Address reuse: a removed member's addresses stay retired until the removal
lapses (``time + cert_lifetime``: no certificate holding them can still be
valid), so a member that has not yet heard of the removal never sends one
member's traffic to another; the next join then forgets the lapsed record.
Its name is free at once.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Optional, Protocol

import nacl.bindings as _nb

from phantom import crypto

from . import names
from .allocate import derived_ipv6
from .canonical import (KEY_SIZE, SIG_SIZE, TIME_MAX, b64, bytes_field, int_field, object_fields,
                        signed_bytes, strict_loads)
from .certificate import (MAX_CERT_SIZE, Certificate, Certified, check_budget, issue_certificate,
                          verify_certificate)
from .definition import MAX_DEFINITION_SIZE, Definition, parse_definition
from .errors import AllocationError, FormatError, InviteError, NetworkError
from .invite import SECRET_SIZE, Invite, hash_secret, id_field
from .keys import SigningKey, fingerprint_field, key_field, valid_x25519, verify
from .removal import Removal, make_removal

VERSION = 1
JOIN_DOMAIN = b"phantom-network-join-v1\n"
RENEW_DOMAIN = b"phantom-network-renew-v1\n"
MAX_REQUEST_SIZE = 2048
MAX_REQUEST_SKEW = 300
REQUEST_FIELDS = ("v", "net", "invite", "secret", "key", "signing_key", "name", "time", "sig")
RENEW_FIELDS = ("v", "net", "key", "signing_key", "time", "sig")


class JoinError(NetworkError):
    """A join or an admin step was refused.  ``code``: malformed, wrong_network,
    stale, bad_proof, name_required, name_mismatch, name_taken,
    already_member, not_member, expired (a renewal after the certificate
    expired: join again), conflict (a unique constraint: the store retries the
    transaction); the invite's codes are raised as InviteError."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


# --- the request -------------------------------------------------------------------------------

@dataclass(frozen=True)
class JoinRequest:
    network: str
    invite: str
    secret: bytes = field(repr=False)
    key: bytes = b""
    signing_key: bytes = b""
    name: Optional[str] = None
    time: int = 0
    sig: bytes = field(default=b"", repr=False)


def make_join_request(token: Any, public_key: bytes, signing_key: bytes, sign: Any, now: float,
                      name: Optional[str] = None) -> dict:
    """The request ``phantom join`` sends for ``token`` (an InviteToken):
    ``sign(message) -> 64 bytes`` signs with the node key's Ed25519 form
    (NodeSigner.sign), whose public half is ``signing_key``."""
    doc = {"v": VERSION, "net": token.network, "invite": token.id, "secret": b64(token.secret),
           "key": b64(public_key), "signing_key": b64(signing_key), "name": name,
           "time": int(now)}
    doc["sig"] = b64(sign(JOIN_DOMAIN + signed_bytes(doc)))
    return doc


def _binds(public_key: bytes, signing_key: bytes) -> bool:
    """Ed25519 ``signing_key`` is the Edwards form of X25519 ``public_key``
    (libsodium's birational map; it refuses small-order and off-subgroup keys)."""
    try:
        mapped = _nb.crypto_sign_ed25519_pk_to_curve25519(bytes(signing_key))
    except Exception:
        return False
    return crypto.equal(mapped, bytes(public_key))


def _fresh_and_proven(doc: dict, key: bytes, signing_key: bytes, sig: bytes, when: int,
                      domain: bytes, now: float, what: str) -> None:
    if abs(when - now) > MAX_REQUEST_SKEW:
        raise JoinError("stale", "%s dated %d s from the server's clock (at most %d s):"
                        " check the clocks" % (what, when - now, MAX_REQUEST_SKEW))
    if not _binds(key, signing_key) or not verify(signing_key, domain, signed_bytes(doc), sig):
        raise JoinError("bad_proof", "%s does not prove possession of its key" % what)


fresh_and_proven = _fresh_and_proven     # the signed requests of network/routes.py too


def _request_doc(raw: Any, fields: tuple, what: str) -> dict:
    doc = raw if isinstance(raw, dict) else strict_loads(raw, MAX_REQUEST_SIZE, what)
    object_fields(doc, fields)
    if doc["v"] != VERSION or isinstance(doc["v"], bool):
        raise FormatError("version %r is not supported" % (doc["v"],), "v")
    return doc


def _member_key(doc: dict) -> bytes:
    key = key_field(doc["key"], "key", valid_x25519, "is not a usable X25519 key")
    return key


def _for_network(network: str, definition: Definition, what: str) -> None:
    if network != definition.fingerprint:
        raise JoinError("wrong_network", "this %s is for network %s, not %s (%s)"
                        % (what, network, definition.fingerprint, definition.name))


for_network = _for_network


def verify_join_request(raw: Any, definition: Definition, now: float) -> JoinRequest:
    """A well-formed, fresh join request for ``definition`` that proves
    possession of its key, or JoinError saying which it is not."""
    try:
        doc = _request_doc(raw, REQUEST_FIELDS, "join request")
        key = _member_key(doc)
        name = doc["name"]
        if name is not None:
            names.label(name, "name")
        req = JoinRequest(fingerprint_field(doc["net"], "net"), id_field(doc["invite"], "invite"),
                          bytes_field(doc["secret"], "secret", SECRET_SIZE), key,
                          bytes_field(doc["signing_key"], "signing_key", KEY_SIZE), name,
                          int_field(doc["time"], "time", 0, TIME_MAX),
                          bytes_field(doc["sig"], "sig", SIG_SIZE))
    except FormatError as exc:
        raise JoinError("malformed", "malformed join request: %s" % (exc.detail or exc)) from None
    _for_network(req.network, definition, "join request")
    _fresh_and_proven(doc, req.key, req.signing_key, req.sig, req.time, JOIN_DOMAIN, now,
                      "join request")
    return req


def make_renew_request(network: str, public_key: bytes, signing_key: bytes, sign: Any,
                       now: float) -> dict:
    """What a member's daemon sends to renew its certificate (POST /network/renew)."""
    doc = {"v": VERSION, "net": network, "key": b64(public_key),
           "signing_key": b64(signing_key), "time": int(now)}
    doc["sig"] = b64(sign(RENEW_DOMAIN + signed_bytes(doc)))
    return doc


def verify_renew_request(raw: Any, definition: Definition, now: float) -> bytes:
    """The member key of a well-formed, fresh renewal request that proves
    possession of it, or JoinError."""
    try:
        doc = _request_doc(raw, RENEW_FIELDS, "renewal request")
        key = _member_key(doc)
        network = fingerprint_field(doc["net"], "net")
        signing_key = bytes_field(doc["signing_key"], "signing_key", KEY_SIZE)
        when = int_field(doc["time"], "time", 0, TIME_MAX)
        sig = bytes_field(doc["sig"], "sig", SIG_SIZE)
    except FormatError as exc:
        raise JoinError("malformed", "malformed renewal request: %s"
                        % (exc.detail or exc)) from None
    _for_network(network, definition, "renewal request")
    _fresh_and_proven(doc, key, signing_key, sig, when, RENEW_DOMAIN, now, "renewal request")
    return key


def join_answer(definition: Definition, certificate: Certificate) -> dict:
    """What the directory answers a join or a renewal with."""
    return {"definition": definition.doc, "certificate": certificate.doc}



def member_rows(records, now: float) -> list[dict]:
    """The members list an admin sees (GET /network/admin/members, ``phantom
    network members``): one row per member record, by IPv4 address, with its
    status (member, expired, removed) at ``now``."""
    rows = []
    for m in sorted(records, key=lambda m: int(m.cert.ipv4)):
        c = m.cert
        rows.append({"name": c.name, "key": b64(c.key), "ipv4": str(c.ipv4),
                     "ipv6": str(c.ipv6), "groups": list(c.groups), "since": c.since,
                     "expires": c.not_after, "removed": m.removed,
                     "status": "removed" if m.removed is not None else
                     ("expired" if c.not_after <= now else "member")})
    return rows

def accept_join_answer(raw: Any, network: str, key: bytes, now: float) -> tuple:
    """The joining machine's check of the answer: the definition must be signed
    by the authority the invite token names (``network``, its fingerprint: a
    hostile directory cannot enrol the machine in another network), and the
    certificate must hold for that definition and for this machine's ``key``.
    (Definition, Certificate), or Refused / FormatError."""
    doc = raw if isinstance(raw, dict) else strict_loads(
        raw, MAX_DEFINITION_SIZE + MAX_CERT_SIZE + 64, "join answer")
    try:
        object_fields(doc, ("definition", "certificate"))
    except FormatError as exc:
        raise exc.about("join answer") from None
    definition = parse_definition(doc["definition"], network)
    cert = verify_certificate(doc["certificate"], definition, now, key=key)
    return definition, cert


# --- the ledger --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemberRecord(Certified):
    """What the store keeps per member (one row; unique name, ipv4, ipv6)."""

    cert: Certificate
    invite: str                       # the invite it joined with ("" when added otherwise)
    removed: Optional[int] = None     # the removal's time, once removed


class Ledger(Protocol):
    """The store's view of one transaction (SQLite/PostgreSQL rows, or
    :class:`MemoryLedger`).  Reads see the transaction's own writes."""

    def invite(self, invite_id: str) -> Optional[Invite]: ...
    def invites(self) -> Iterable[Invite]: ...
    def save_invite(self, invite: Invite) -> None: ...
    def member(self, key: bytes) -> Optional[MemberRecord]: ...
    def member_named(self, name: str) -> Optional[MemberRecord]: ...
    def members(self) -> Iterable[MemberRecord]: ...
    def addresses(self) -> Iterable[tuple]: ...
    # address allocation, flat in N (:func:`_allocate`): point lookups and a cursor
    def holder(self, address: Any) -> Optional[bytes]: ...
    def lapsed(self, before: int) -> Iterable[tuple]: ...
    def lowest_freed(self, first: int, last: int) -> Optional[int]: ...
    def alloc_cursor(self) -> Optional[int]: ...
    def set_alloc_cursor(self, value: int) -> None: ...
    def save_member(self, record: MemberRecord) -> None: ...
    def delete_member(self, key: bytes) -> None: ...
    def next_serial(self) -> int: ...
    def append(self, event: dict) -> int: ...
    def policy_doc(self) -> Optional[dict]: ...
    def advert(self, key: bytes) -> Optional[dict]: ...
    def adverts(self) -> dict: ...
    def save_advert(self, key: bytes, doc: dict) -> None: ...


@dataclass(frozen=True)
class JoinResult:
    certificate: Certificate
    seq: int                          # the watch stream's event for it (0: nothing new)
    retried: bool = False             # the same request again: the certificate it got


def lapsed(record: MemberRecord, definition: Definition, now: float) -> bool:
    """A removed member whose removal has lapsed: no certificate of it can be valid."""
    return record.removed is not None and record.removed + definition.cert_lifetime < now


def _allocate(ledger: Ledger, definition: Definition, now: float) -> tuple:
    """(IPv4, IPv6, the lapsed records to forget, the new cursor or None):
    the lowest free host address of the IPv4 prefix (never a current
    member's, nor a removed member's until its removal lapses) and the IPv6
    address derived from it (allocate.py), found without reading every
    member: a join's cost must not grow with N (bench/network_scale.py).

    The store keeps a cursor (every IPv4 address of the prefix below it is
    held, or was freed since: then it is in the store's freed list) and the
    freed list (addresses of deleted records).  The lowest free address is
    the lowest freed one, or a lapsed record's (its row goes in this
    transaction), or the first unheld one from the cursor on: point lookups
    on the unique address columns, one or two per join.  A store that has
    no cursor yet (a database from before) walks from the prefix's start
    once.  Nothing is written here: the caller writes after every check."""
    net = ipaddress.IPv4Network(definition.ipv4)
    if net.prefixlen > 30:
        raise AllocationError("%s has no room for members (use /30 or shorter)" % net)
    first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
    gone = list(ledger.lapsed(math.ceil(now - definition.cert_lifetime)))   # lapsed()
    gone_keys = {bytes(g[0]) for g in gone}

    def free(address) -> bool:
        held = ledger.holder(address)
        return held is None or bytes(held) in gone_keys

    cursor = ledger.alloc_cursor()
    if cursor is None or not first <= cursor <= last + 1:
        cursor = first
    below = [a for a in [ledger.lowest_freed(first, cursor - 1)]
             + [int(g[1]) for g in gone if first <= int(g[1]) < cursor] if a is not None]
    new_cursor = None
    picked = None
    for a in sorted(below):
        if free(ipaddress.IPv4Address(a)):
            picked = a
            break
    if picked is None:
        c = cursor
        while c <= last and not free(ipaddress.IPv4Address(c)):
            c += 1
        if c > last:
            raise AllocationError("no free IPv4 address left in %s (%d of %d host addresses "
                                  "taken)" % (net, last - first + 1, last - first + 1))
        picked, new_cursor = c, c + 1
    ipv4 = ipaddress.IPv4Address(picked)
    v6 = derived_ipv6(definition.ipv6, ipv4)
    end6 = int(ipaddress.IPv6Network(definition.ipv6).network_address) + (1 << 64) - 1
    while not free(v6):
        if int(v6) >= end6:
            raise AllocationError("no free IPv6 address in subnet 0 of %s above %s"
                                  % (definition.ipv6, derived_ipv6(definition.ipv6, ipv4)))
        v6 = ipaddress.IPv6Address(int(v6) + 1)
    return ipv4, v6, [g[0] for g in gone], new_cursor


def _issue(ledger: Ledger, definition: Definition, admission: SigningKey, now: float,
           key: bytes, name: str, ipv4: Any, ipv6: Any, groups: Iterable[str],
           since: Optional[int], not_before: int, routes: Iterable[Any] = (),
           exit: bool = False) -> Certificate:
    return issue_certificate(definition, admission, key=key, name=name, ipv4=ipv4, ipv6=ipv6,
                             serial=ledger.next_serial(), now=not_before, groups=groups,
                             routes=routes, exit=exit, since=since)


def join(ledger: Ledger, definition: Definition, admission: SigningKey, request: Any,
         now: float) -> JoinResult:
    """Admit the node of a join ``request`` (see the module documentation).

    Raises JoinError, InviteError (invalid, revoked, used, expired: the same
    "invite not valid" for an unknown id as for a wrong secret),
    AllocationError (the prefix is full) or FormatError (the name and groups
    do not fit a certificate); the ledger is then untouched."""
    req = verify_join_request(request, definition, now)
    invite = ledger.invite(req.invite)
    if invite is None or invite.network != definition.fingerprint:
        hash_secret(req.secret)                         # the same work as a wrong secret
        raise InviteError("invalid", "invite not valid")
    held = ledger.member(req.key)
    if held is not None and held.removed is None and held.cert.not_after > now:
        if held.invite == invite.id and crypto.equal(hash_secret(req.secret), invite.secret_hash):
            return JoinResult(held.cert, 0, retried=True)     # a retry after a lost answer
        raise JoinError("already_member", "this key is already a member of %s (as %s)"
                        % (definition.name, held.name))
    redeemed = invite.redeem(req.secret, now)
    if invite.name is not None and req.name is not None and req.name != invite.name:
        raise JoinError("name_mismatch", "this invite is for the member %r, not %r"
                        % (invite.name, req.name))
    name = invite.name or req.name
    if name is None:
        raise JoinError("name_required", "choose a name for this member (--name)")
    check_budget(name, invite.groups)
    other = ledger.member_named(name)
    if other is not None and other.removed is None and other.key != req.key:
        raise JoinError("name_taken", "the name %r is taken in %s" % (name, definition.name))
    ipv4, ipv6, gone, cursor = _allocate(ledger, definition, now)
    not_before = int(now)
    if held is not None and held.removed is not None and held.removed >= not_before:
        not_before = held.removed + 1         # after the removal, or the removal refuses it
    cert = _issue(ledger, definition, admission, now, req.key, name, ipv4, ipv6, invite.groups,
                  since=not_before, not_before=not_before)
    # every check passed: the writes
    for key in gone:
        if key != req.key:
            ledger.delete_member(key)
    if cursor is not None:
        ledger.set_alloc_cursor(cursor)
    ledger.save_invite(redeemed)
    ledger.save_member(MemberRecord(cert, invite.id))
    seq = ledger.append({"op": "member", "cert": cert.doc})
    return JoinResult(cert, seq)


def renew(ledger: Ledger, definition: Definition, admission: SigningKey, request: Any,
          now: float) -> JoinResult:
    """A fresh certificate for the current member that sent the renewal
    ``request`` (see :func:`make_renew_request`): the same name, addresses,
    groups, routes and ``since`` (the daemon asks at 2/3 of the lifetime)."""
    return reissue(ledger, definition, admission, verify_renew_request(request, definition, now),
                   now)


def reissue(ledger: Ledger, definition: Definition, admission: SigningKey, key: bytes,
            now: float, routes: Optional[Iterable[Any]] = None,
            exit: Optional[bool] = None) -> JoinResult:
    """A fresh certificate for the current member ``key`` (renewal, or an
    admin's approval or revocation of routes and exit: ``routes``/``exit``
    replace the held ones, network/routes.py).  A certificate that has
    expired is not renewed: the machine joins again with an invite (a
    certificate's expiry is the network's re-authentication)."""
    held = ledger.member(bytes(key))
    if held is None or held.removed is not None:
        raise JoinError("not_member", "this key is not a member of %s" % definition.name)
    c = held.cert
    if c.not_after <= now:
        raise JoinError("expired", "the certificate of %s expired %d s ago: join %s again with "
                        "an invite" % (c.name, now - c.not_after, definition.name))
    cert = _issue(ledger, definition, admission, now, c.key, c.name, c.ipv4, c.ipv6, c.groups,
                  since=c.since, not_before=max(int(now), c.not_before),
                  routes=c.routes if routes is None else routes,
                  exit=c.exit if exit is None else exit)
    ledger.save_member(replace(held, cert=cert))
    return JoinResult(cert, ledger.append({"op": "member", "cert": cert.doc}))


def find_member(ledger: Ledger, who: str) -> MemberRecord:
    """A current member by name or by public key (base64), or JoinError."""
    held = None
    try:
        raw = bytes_field(who, "key", KEY_SIZE)
        held = ledger.member(raw)
    except FormatError:
        held = ledger.member_named(who)
    if held is None or held.removed is not None:
        raise JoinError("not_member", "%r is not a member" % (who,))
    return held


def remove(ledger: Ledger, definition: Definition, admission: SigningKey, who: str,
           now: float) -> tuple:
    """Remove a member (by name or key): sign a removal with the admission
    key, mark the record, append a ``removed`` event.  (Removal, seq)."""
    held = find_member(ledger, who)
    removal: Removal = make_removal(definition, admission, held.key,
                                    max(int(now), held.cert.not_before))
    ledger.save_member(replace(held, removed=removal.time))
    return removal, ledger.append({"op": "removed", "removal": removal.doc})


def current_policy(ledger: Ledger) -> Optional[Any]:
    """The policy in force (the last ``policy`` event's document, parsed), or None."""
    from .policy import parse_policy
    doc = ledger.policy_doc()
    return None if doc is None else parse_policy(doc)


def set_policy(ledger: Ledger, definition: Definition, admission: SigningKey, body: Any,
               now: float) -> tuple:
    """Sign ``body`` (a validated :class:`phantom.network.policy.PolicyBody`) as
    the next policy (seq = the one in force + 1) and append a ``policy`` event
    to the member stream.  (Policy, event seq)."""
    from .policy import sign_policy
    held = current_policy(ledger)
    policy = sign_policy(body, definition, admission, 1 if held is None else held.seq + 1, now)
    return policy, ledger.append({"op": "policy", "policy": policy.doc})


def add_invite(ledger: Ledger, invite: Invite) -> None:
    if ledger.invite(invite.id) is not None:
        raise JoinError("malformed", "invite %s exists already" % invite.id)
    ledger.save_invite(invite)


def revoke_invite(ledger: Ledger, invite_id: str) -> Invite:
    """End an invite: it grants nothing from now on (its members stay)."""
    invite = ledger.invite(invite_id)
    if invite is None:
        raise InviteError("invalid", "no invite %r" % (invite_id,))
    revoked = invite.revoke()
    ledger.save_invite(revoked)
    return revoked


# --- an in-memory ledger (the authority directory's file, and tests) --------------------------

class MemoryLedger:
    """A :class:`Ledger` in memory, with the uniqueness rules a database
    enforces (one member per name among current members, per address, per key)
    checked on every write; :meth:`to_doc`/:meth:`from_doc` persist it."""

    def __init__(self) -> None:
        self._invites: dict = {}
        self._members: dict = {}            # key -> MemberRecord
        self._names: dict = {}              # name -> {key}: current and removed holders
        self._addresses: dict = {}          # IPv4 or IPv6 address -> key
        self._freed: set = set()            # IPv4 addresses (ints) of deleted records
        self.cursor: Optional[int] = None   # allocation's cursor (not persisted: walks once)
        self.serial = 0
        self.seq = 0
        self.events: list = []              # (seq, event) in order: the watch stream
        self._adverts: dict = {}            # key -> its advertisement (routes, exit)

    def invite(self, invite_id: str) -> Optional[Invite]:
        return self._invites.get(invite_id)

    def invites(self) -> list:
        return sorted(self._invites.values(), key=lambda i: (i.created, i.id))

    def save_invite(self, invite: Invite) -> None:
        self._invites[invite.id] = invite

    def member(self, key: bytes) -> Optional[MemberRecord]:
        return self._members.get(bytes(key))

    def member_named(self, name: str) -> Optional[MemberRecord]:
        """The current member called ``name``, else a removed one, else None."""
        found = sorted((self._members[k] for k in self._names.get(name, ())),
                       key=lambda m: (m.removed is not None, m.key))
        return found[0] if found else None

    def members(self) -> list:
        return list(self._members.values())

    def addresses(self) -> list:
        """(key, IPv4, IPv6, removed) of every member record."""
        return [(m.key, m.cert.ipv4, m.cert.ipv6, m.removed) for m in self._members.values()]

    def holder(self, address) -> Optional[bytes]:
        """The key of the record holding ``address`` (IPv4 or IPv6), or None."""
        return self._addresses.get(address)

    def lapsed(self, before: int) -> list:
        """(key, IPv4, IPv6) of every record removed before ``before``
        (a scan: the authority's own file is small; the SQL stores use an index)."""
        return [(m.key, m.cert.ipv4, m.cert.ipv6) for m in self._members.values()
                if m.removed is not None and m.removed < before]

    def lowest_freed(self, first: int, last: int) -> Optional[int]:
        inside = [a for a in self._freed if first <= a <= last]
        return min(inside) if inside else None

    def alloc_cursor(self) -> Optional[int]:
        return self.cursor

    def set_alloc_cursor(self, value: int) -> None:
        self.cursor = int(value)

    def save_member(self, record: MemberRecord) -> None:
        key = record.key
        if record.removed is None:
            for other in self._names.get(record.name, ()):
                if other != key and self._members[other].removed is None:
                    raise JoinError("name_taken", "unique constraint: name %s" % record.name)
        for address in (record.cert.ipv4, record.cert.ipv6):
            holder = self._addresses.get(address)
            if holder is not None and holder != key:
                raise JoinError("conflict", "unique constraint: address %s / %s"
                                % (record.cert.ipv4, record.cert.ipv6))
        self._unindex(key)
        self._members[key] = record
        self._names.setdefault(record.name, set()).add(key)
        self._addresses[record.cert.ipv4] = key
        self._addresses[record.cert.ipv6] = key
        self._freed.discard(int(record.cert.ipv4))

    def _unindex(self, key: bytes) -> None:
        old = self._members.pop(key, None)
        if old is None:
            return
        holders = self._names.get(old.name)
        if holders is not None:
            holders.discard(key)
            if not holders:
                del self._names[old.name]
        for address in (old.cert.ipv4, old.cert.ipv6):
            if self._addresses.get(address) == key:
                del self._addresses[address]

    def delete_member(self, key: bytes) -> None:
        old = self._members.get(bytes(key))
        self._unindex(bytes(key))
        if old is not None:
            self._freed.add(int(old.cert.ipv4))

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def append(self, event: dict) -> int:
        self.seq += 1
        self.events.append((self.seq, event))
        return self.seq

    def policy_doc(self) -> Optional[dict]:
        for _seq, ev in reversed(self.events):
            if ev.get("op") == "policy":
                return ev["policy"]
        return None

    def advert(self, key: bytes) -> Optional[dict]:
        return self._adverts.get(bytes(key))

    def adverts(self) -> dict:
        return dict(self._adverts)

    def save_advert(self, key: bytes, doc: dict) -> None:
        self._adverts[bytes(key)] = doc

    def stream(self, since: int = 0) -> list:
        """The watch stream's events after ``since``, as a member reads them."""
        return [dict(ev, seq=seq) for seq, ev in self.events if seq > since]

    def to_doc(self) -> dict:
        return {"v": 1, "serial": self.serial, "seq": self.seq,
                "invites": [i.to_doc() for i in self.invites()],
                "members": [{"cert": m.cert.doc, "invite": m.invite, "removed": m.removed}
                            for m in sorted(self._members.values(),
                                            key=lambda m: (int(m.cert.ipv4), m.key))],
                "events": [dict(ev, seq=seq) for seq, ev in self.events],
                "adverts": [self._adverts[k] for k in sorted(self._adverts)]}

    @classmethod
    def from_doc(cls, doc: Any, definition: Definition) -> "MemoryLedger":
        """Load what :meth:`to_doc` wrote (the authority's own file: its
        certificates are parsed, not re-verified, so an expired one stays
        on record)."""
        from .certificate import parse_certificate
        from .invite import parse_invite
        try:
            object_fields(doc, ("v", "serial", "seq", "invites", "members", "events"),
                          ("adverts",))
            if doc["v"] != 1 or isinstance(doc["v"], bool):
                raise FormatError("version %r is not supported" % (doc["v"],), "v")
            led = cls()
            led.serial = int_field(doc["serial"], "serial", 0, 2 ** 53)
            led.seq = int_field(doc["seq"], "seq", 0, 2 ** 53)
            for i in doc["invites"]:
                led.save_invite(parse_invite(i))
            for i, m in enumerate(doc["members"]):
                object_fields(m, ("cert", "invite", "removed"), path="members[%d]" % i)
                cert = parse_certificate(m["cert"])
                if cert.network != definition.fingerprint:
                    raise FormatError("a member of another network", "members[%d]" % i)
                removed = m["removed"]
                if removed is not None:
                    int_field(removed, "members[%d].removed" % i, 0, TIME_MAX)
                led.save_member(MemberRecord(cert, str(m["invite"]), removed))
            for ev in doc["events"]:
                ev = dict(ev)
                led.events.append((int_field(ev.pop("seq"), "seq", 1, 2 ** 53), ev))
            for i, a in enumerate(doc.get("adverts", [])):
                led._adverts[bytes_field(a["key"], "adverts[%d].key" % i, KEY_SIZE)] = a
        except (FormatError, JoinError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, JoinError):
                raise FormatError("damaged: %s" % exc, what="authority ledger") from None
            if isinstance(exc, FormatError):
                raise exc.about("authority ledger") from None
            raise FormatError("damaged: %s" % exc, what="authority ledger") from None
        return led

