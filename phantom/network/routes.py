"""Subnet routes and exits in a network (issue 22): advertised by the
member, approved by the admin, carried in the member's certificate.

* A member **advertises** what it could offer -- LAN prefixes behind it
  (``[interface] advertise_routes``) and itself as an exit (``[interface]
  exit_node = true``) -- with a small request signed by its node key
  (``POST /network/advertise``, :func:`make_advertisement`)::

      {"exit":true,"key":"<X25519>","net":"<fingerprint>","routes":["192.168.50.0/24"],
       "sig":"<Ed25519>","signing_key":"<Ed25519>","time":1760000000,"v":1}

  The directory keeps the latest per member (:func:`advertise`; an older
  ``time`` is refused as stale, so a replay cannot bring back a withdrawn
  route).  An advertisement grants nothing.
* The admin **approves** (:func:`approve`): the member's certificate is
  reissued with the approved prefixes in ``routes`` and/or ``exit`` true,
  and the ``member`` event carries it to every member.  An approved prefix
  is never wider than an advertised one (each must lie inside an
  advertised prefix); the exit flag needs an advertised exit.  **Revoke**
  (:func:`revoke`) reissues it without them.  A member that withdraws a
  route or its exit (a new advertisement without it) loses the approval at
  once: the directory reissues its certificate in the same transaction.
* **Overlaps** between members' approved routes are settled by
  :func:`assign`, the same total order as every other conflict in the
  member set: the member that joined earlier (``since``), then the lower
  key, is *primary* for a prefix; a later member's overlapping prefix is a
  *standby* (shown, not routed) that takes over by itself when the primary's
  goes.  Every member and the admin's listing compute the same answer from
  the certificates alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional

from .canonical import (KEY_SIZE, SIG_SIZE, TIME_MAX, b64, bool_field, bytes_field, int_field,
                        list_field, object_fields, signed_bytes, strict_loads)
from .certificate import MAX_ROUTES, check_budget, route_field
from .definition import Definition
from .errors import FormatError
from .keys import fingerprint_field

VERSION = 1
ADVERTISE_DOMAIN = b"phantom-network-advertise-v1\n"
FIELDS = ("v", "net", "key", "signing_key", "routes", "exit", "time", "sig")
MAX_ADVERTISED = 16
MAX_ADVERTISEMENT_SIZE = 2048


@dataclass(frozen=True)
class Advertisement:
    key: bytes
    routes: tuple                 # sorted prefixes
    exit: bool
    time: int
    doc: dict

    def summary(self) -> dict:
        return {"routes": [str(r) for r in self.routes], "exit": self.exit, "time": self.time}


def _sort(nets: Iterable) -> list:
    return sorted(set(nets), key=lambda n: (n.version, n))


def make_advertisement(network: str, public_key: bytes, signing_key: bytes, sign: Any,
                       routes: Iterable[Any], exit: bool, now: float) -> dict:
    """The request a member's daemon sends (``sign``: NodeSigner.sign)."""
    nets = _sort(ipaddress.ip_network(r) for r in routes)
    doc = {"v": VERSION, "net": network, "key": b64(public_key), "signing_key": b64(signing_key),
           "routes": [str(n) for n in nets], "exit": bool(exit), "time": int(now)}
    doc["sig"] = b64(sign(ADVERTISE_DOMAIN + signed_bytes(doc)))
    return doc


def parse_advertisement(raw: Any, definition: Definition) -> Advertisement:
    """Shape only (FormatError): a stored advertisement, or before the proof check."""
    doc = raw if isinstance(raw, dict) else strict_loads(raw, MAX_ADVERTISEMENT_SIZE,
                                                         "advertisement")
    try:
        object_fields(doc, FIELDS)
        if doc["v"] != VERSION or isinstance(doc["v"], bool):
            raise FormatError("version %r is not supported" % (doc["v"],), "v")
        fingerprint_field(doc["net"], "net")
        key = bytes_field(doc["key"], "key", KEY_SIZE)
        bytes_field(doc["signing_key"], "signing_key", KEY_SIZE)
        bytes_field(doc["sig"], "sig", SIG_SIZE)
        nets = [route_field(r, "routes[%d]" % i)
                for i, r in enumerate(list_field(doc["routes"], "routes", MAX_ADVERTISED))]
        if [str(n) for n in _sort(nets)] != doc["routes"]:
            raise FormatError("must be sorted (IPv4 first), each once", "routes")
        for n in nets:
            own = definition.ipv4 if n.version == 4 else definition.ipv6
            if n.overlaps(own):
                raise FormatError("%s overlaps the network's own %s" % (n, own), "routes")
        adv = Advertisement(key, tuple(nets), bool_field(doc["exit"], "exit"),
                            int_field(doc["time"], "time", 0, TIME_MAX), doc)
    except FormatError as exc:
        raise exc.about("advertisement") from None
    return adv


def verify_advertisement(raw: Any, definition: Definition, now: float) -> Advertisement:
    """A well-formed, fresh advertisement for ``definition`` that proves
    possession of its key, or JoinError (``malformed``, ``wrong_network``,
    ``stale``, ``bad_proof``)."""
    from .join import JoinError, for_network, fresh_and_proven
    try:
        adv = parse_advertisement(raw, definition)
    except FormatError as exc:
        raise JoinError("malformed", str(exc)) from None
    doc = adv.doc
    for_network(doc["net"], definition, "advertisement")
    fresh_and_proven(doc, adv.key, bytes_field(doc["signing_key"], "signing_key", KEY_SIZE),
                      bytes_field(doc["sig"], "sig", SIG_SIZE), adv.time, ADVERTISE_DOMAIN, now,
                      "advertisement")
    return adv


# --- the ledger's side ------------------------------------------------------------------------

def stored_advertisement(ledger: Any, definition: Definition, key: bytes) -> Optional[Advertisement]:
    doc = ledger.advert(bytes(key))
    if doc is None:
        return None
    try:
        return parse_advertisement(doc, definition)
    except FormatError:
        return None


def _covered(net, within: Iterable) -> bool:
    return any(net.version == w.version and net.subnet_of(w) for w in within)


def _normal(nets: Iterable) -> list:
    """Sorted, each once, no prefix inside another (the wider one stays)."""
    out = []
    for n in sorted(set(nets), key=lambda n: (n.version, n.prefixlen, n)):
        if not _covered(n, out):
            out.append(n)
    return _sort(out)


def _reissued(ledger, definition, admission, held, routes, exit: bool, now: float):
    from .join import JoinError, reissue
    routes = _normal(routes)
    if len(routes) > MAX_ROUTES:
        raise JoinError("malformed", "a certificate holds at most %d routes; %s would have %d"
                        % (MAX_ROUTES, held.name, len(routes)))
    try:
        check_budget(held.name, held.cert.groups, routes, exit)
    except FormatError as exc:
        raise JoinError("malformed", str(exc)) from None
    return reissue(ledger, definition, admission, held.key, now, routes=routes, exit=exit)


def advertise(ledger: Any, definition: Definition, admission: Any, raw: Any, now: float) -> tuple:
    """Store a member's advertisement (see the module text); approvals it no
    longer covers are withdrawn at once.  (Advertisement, JoinResult of the
    reissued certificate or None)."""
    from .join import JoinError, find_member
    adv = verify_advertisement(raw, definition, now)
    held = find_member(ledger, b64(adv.key))
    old = stored_advertisement(ledger, definition, adv.key)
    if old is not None and old.time > adv.time:
        raise JoinError("stale", "an advertisement of %s newer than this one is held"
                        % held.name)
    c = held.cert
    keep = [r for r in c.routes if _covered(r, adv.routes)]
    exit = c.exit and adv.exit
    result = None
    if keep != list(c.routes) or exit != c.exit:
        result = _reissued(ledger, definition, admission, held, keep, exit, now)
    ledger.save_advert(adv.key, adv.doc)
    return adv, result


def approve(ledger: Any, definition: Definition, admission: Any, who: str,
            prefixes: Iterable[Any] = (), exit: bool = False, now: float = 0.0):
    """Approve ``prefixes`` (each inside an advertised one) and/or the exit
    for the member ``who``; neither: everything it advertises.  The
    reissued certificate's JoinResult, or JoinError (not advertised)."""
    from .join import JoinError, find_member
    held = find_member(ledger, who)
    adv = stored_advertisement(ledger, definition, held.key)
    if adv is None:
        raise JoinError("not_advertised", "%s advertises no routes and no exit" % held.name)
    nets = [_net(p) for p in prefixes]
    if not nets and not exit:
        nets, exit = list(adv.routes), adv.exit
        if not nets and not exit:
            raise JoinError("not_advertised", "%s advertises no routes and no exit" % held.name)
    for n in nets:
        if not _covered(n, adv.routes):
            raise JoinError("not_advertised", "%s does not advertise %s (it advertises %s): an "
                            "approval is never wider than the advertisement"
                            % (held.name, n, ", ".join(map(str, adv.routes)) or "no routes"))
    if exit and not adv.exit:
        raise JoinError("not_advertised", "%s does not advertise itself as exit" % held.name)
    c = held.cert
    return _reissued(ledger, definition, admission, held, list(c.routes) + nets,
                     c.exit or exit, now)


def revoke(ledger: Any, definition: Definition, admission: Any, who: str,
           prefixes: Iterable[Any] = (), exit: bool = False, now: float = 0.0):
    """Take back approved ``prefixes`` and/or the exit; neither: all of them."""
    from .join import JoinError, find_member
    held = find_member(ledger, who)
    c = held.cert
    nets = [_net(p) for p in prefixes]
    if not nets and not exit:
        nets, exit = list(c.routes), c.exit
    for n in nets:
        if n not in c.routes:
            raise JoinError("not_approved", "%s is not approved for %s (approved: %s)"
                            % (n, held.name, ", ".join(map(str, c.routes)) or "none"))
    if exit and not c.exit:
        raise JoinError("not_approved", "%s is not an approved exit" % held.name)
    return _reissued(ledger, definition, admission, held,
                     [r for r in c.routes if r not in nets], c.exit and not exit, now)


def _net(text: Any):
    from .join import JoinError
    try:
        return route_field(str(ipaddress.ip_network(str(text), strict=True)), "prefix")
    except (ValueError, FormatError) as exc:
        raise JoinError("malformed", "%s: %s" % (text, exc)) from None


# --- overlaps -----------------------------------------------------------------------------------

def assign(certs: Iterable[Any]) -> dict:
    """Who routes what: {key: (primary prefixes, [(standby prefix, primary's key)])}
    for the certificates with approved routes.  In the order of
    ``Certificate.priority`` (joined earlier, then lower key), each prefix
    is primary unless it overlaps a primary prefix of an earlier member."""
    taken: list = []                       # (prefix, key) primary so far
    out: dict = {}
    for c in sorted((c for c in certs if c.routes), key=lambda c: c.priority):
        primary, standby = [], []
        for r in c.routes:
            holder = next((k for n, k in taken if k != c.key and n.version == r.version
                           and n.overlaps(r)), None)
            if holder is None:
                primary.append(r)
            else:
                standby.append((r, holder))
        taken.extend((r, c.key) for r in primary)
        out[c.key] = (tuple(primary), standby)
    return out


def listing(members: Iterable[Any], adverts: dict, definition: Definition) -> list:
    """Rows for ``phantom network routes`` and the directory's admin API:
    every current member with an advertisement or an approval.
    ``members``: MemberRecords; ``adverts``: key -> advertisement doc."""
    current = [m for m in members if m.removed is None]
    names = {m.key: m.name for m in current}
    shares = assign(m.cert for m in current)
    rows = []
    for m in sorted(current, key=lambda m: int(m.cert.ipv4)):
        adv = None
        if m.key in adverts:
            try:
                adv = parse_advertisement(adverts[m.key], definition)
            except FormatError:
                adv = None
        c = m.cert
        if adv is None and not c.routes and not c.exit:
            continue
        primary, standby = shares.get(m.key, ((), []))
        rows.append({"name": c.name, "key": b64(c.key),
                     "advertised": [str(r) for r in adv.routes] if adv else [],
                     "advertised_exit": bool(adv and adv.exit),
                     "approved": [str(r) for r in c.routes], "exit": c.exit,
                     "primary": [str(r) for r in primary],
                     "standby": [{"prefix": str(r), "behind": names.get(k, b64(k))}
                                 for r, k in standby],
                     "pending": [str(r) for r in (adv.routes if adv else ())
                                 if not _covered(r, c.routes)]
                     + (["exit"] if adv and adv.exit and not c.exit else [])})
    return rows


__all__ = ["Advertisement", "make_advertisement", "parse_advertisement", "verify_advertisement",
           "advertise", "approve", "revoke", "assign", "listing", "replace"]
