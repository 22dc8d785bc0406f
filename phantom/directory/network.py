"""The network's routes on the directory (issue 20): joining over HTTP.

``phantom directory serve --network DIR`` loads an authority state directory
(network.json, admission.key, admin.token: ``phantom network init``) and adds:

    GET  /network                        the signed definition
    POST /network/join                   a join request -> {definition, certificate}
    POST /network/renew                  a renewal request -> {definition, certificate}
    GET  /network/members[?since=N]      a snapshot, or the member events after N
    POST /network/members {"since": N}   the same
    admin (``Authorization: Bearer <admin.token>``):
    POST /network/admin/invites          {name, groups, uses, expires, directory} -> {token, invite}
    GET  /network/admin/invites[?all=1]  invites (never a secret)
    POST /network/admin/invites/{id}/revoke
    GET  /network/admin/members          current and removed members
    POST /network/admin/members/{who}/remove      by name or key -> the signed removal
    GET  /network/policy                 the signed network policy in force (404: none)
    POST /network/admin/policy           {"source": TOML or JSON text} -> signed and in force
    POST /network/advertise              a member's signed advertisement of routes and exit
    GET  /network/admin/routes           advertised, approved, primary/standby per member
    POST /network/admin/routes/{who}/approve  {"routes": [...], "exit": bool} -> reissued cert
    POST /network/admin/routes/{who}/revoke   the same, taken back

Every change runs :mod:`phantom.network.join` on the store's ledger
(store/ledger.py) in one transaction.  A refusal is ``{"error": sentence,
"code": code}`` with a 4xx status (the codes of JoinError and InviteError,
``malformed`` for a bad body), never a 500; a conflict the store could not
resolve by retrying is a 503 the client retries.  Join, renew and admin
requests draw on the per-source write bucket (429 with Retry-After); a
wrong admin token is a 401 before the body is read, and draws on it too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from aiohttp import web

from phantom import logsetup
from phantom.network.canonical import b64
from phantom.errors import Invalid, Unauthorized
from phantom.network import join as J
from phantom.network import policy as P
from phantom.network.canonical import strict_loads
from phantom.network.authority import ADMIN_TOKEN, AuthorityDir
from phantom.network.definition import Definition
from phantom.network.errors import AllocationError, FormatError, InviteError, NetworkError
from phantom.network.invite import MAX_INVITE_TTL, MAX_USES, create_invite
from phantom.network.keys import SigningKey, read_limited
from phantom.network.removal import RemovalSet, verify_removal

from . import server as srv

log = logsetup.get_logger("directory")

MAX_ADMIN_TOKEN = 256
EVENTS_PAGE = 1000

# a refusal's code -> status
_STATUS = {"malformed": 400, "wrong_network": 400, "stale": 400, "name_required": 400,
           "name_mismatch": 400, "bad_proof": 403, "invalid": 403, "revoked": 403,
           "used": 403, "expired": 403, "not_member": 404, "name_taken": 409,
           "already_member": 409, "full": 409, "conflict": 503, "not_advertised": 409,
           "not_approved": 409}


@dataclass
class NetworkService:
    """What a front end needs to serve a network: the verified definition,
    the admission key it signs with, the admin token, the store's tables."""

    definition: Definition
    admission: SigningKey
    admin_token: bytes
    tables: Any = None                    # SqliteNetwork / PgNetwork, set by open()

    @classmethod
    def load(cls, path: Any) -> "NetworkService":
        auth = AuthorityDir.open(path)
        token_file = Path(path) / ADMIN_TOKEN
        token = read_limited(token_file, MAX_ADMIN_TOKEN).strip()
        if len(token) < 16:
            raise NetworkError("%s is empty or too short: make a new one (32 random bytes, "
                               "base64url)" % token_file)
        return cls(auth.definition, auth.admission, token)

    async def open(self, store) -> "NetworkService":
        self.tables = await store.network().open(self.definition)
        return self

    async def attach(self, app: web.Application, store) -> "NetworkService":
        """Make the tables in ``store`` and add the routes to ``app``."""
        await self.open(store)
        add_routes(app, self)
        return self


SERVICE_KEY = web.AppKey("network", NetworkService)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json")


def refusal(exc: NetworkError) -> web.Response:
    if isinstance(exc, (J.JoinError, InviteError)):
        code = exc.code
    elif isinstance(exc, AllocationError):
        code = "full"
    else:
        code = "malformed"
    return _json({"error": str(exc), "code": code}, _STATUS.get(code, 400))


def _svc(request: web.Request) -> NetworkService:
    return request.app[SERVICE_KEY]


async def _change(request: web.Request, fn) -> Any:
    """``fn(ledger, now)`` in one store transaction."""
    now = srv.now_of(request)
    return await _svc(request).tables.transact(lambda led: fn(led, now))


def _take_write(request: web.Request) -> None:
    source = srv.source_of(request)
    srv.take(request, "source", source, "writes from %s" % source)


def _admin(request: web.Request) -> None:
    """The bearer admin token, checked in constant time before the body is read."""
    header = request.headers.get("Authorization", "")
    given = header[7:].strip().encode("utf-8", "replace") if header.startswith("Bearer ") else b""
    if not hmac.compare_digest(given, _svc(request).admin_token):
        _take_write(request)              # guessing draws on the source's bucket
        raise Unauthorized("this route needs the network's admin token "
                           "(Authorization: Bearer <admin.token>)")
    _take_write(request)


def _count(request: web.Request, what: str) -> None:
    stats = request.app[srv.STATS_KEY]
    stats[what] = stats.get(what, 0) + 1


# --- public routes ---------------------------------------------------------------------------------
async def get_network(request: web.Request) -> web.Response:
    return _json(_svc(request).definition.doc)


async def _admission_step(request: web.Request, step) -> Any:
    """``step`` (J.join, J.renew) on the request's body, in one store
    transaction: its result, or NetworkError (counted as network_refused)."""
    _take_write(request)
    body = await srv.read_body(request)
    svc = _svc(request)
    try:
        return await _change(request, lambda led, now: step(
            led, svc.definition, svc.admission, body, now))
    except NetworkError:
        _count(request, "network_refused")
        raise


async def post_join(request: web.Request) -> web.Response:
    svc = _svc(request)
    try:
        result = await _admission_step(request, J.join)
    except NetworkError as exc:
        log.info("join refused (%s): %s", srv.source_of(request), exc)
        return refusal(exc)
    cert = result.certificate
    _count(request, "network_joins")
    log.info("%s joined %s as %s (%s, %s)%s", b64(cert.key), svc.definition.name, cert.name,
             cert.ipv4, cert.ipv6, " (a retried request)" if result.retried else "")
    return _json(J.join_answer(svc.definition, cert))


async def post_renew(request: web.Request) -> web.Response:
    try:
        result = await _admission_step(request, J.renew)
    except NetworkError as exc:
        return refusal(exc)
    return _json(J.join_answer(_svc(request).definition, result.certificate))


def _since(text: Any) -> Optional[int]:
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text < 2 ** 53:
        return text
    if isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 16:
        return int(text)
    raise Invalid("since must be a whole number (the last seq seen), 0 for everything")


async def members(request: web.Request) -> web.Response:
    """A snapshot (no ``since``): the current members' certificates, the
    removals in force and the seq they are current at; or the events after
    ``since`` (at most EVENTS_PAGE; ``more`` says whether to ask again)."""
    since = _since(request.query.get("since"))
    if request.method == "POST":
        body = await srv.read_body(request)
        if not isinstance(body, dict) or set(body) - {"since"}:
            raise Invalid('the body is {"since": N}')
        since = _since(body.get("since"))
    svc = _svc(request)
    now = srv.now_of(request)
    if since is not None:
        def page(led):
            return led.seq(), led.stream(since, EVENTS_PAGE)
        seq, events = await svc.tables.read(page)
        return _json({"seq": seq, "events": events,
                      "more": bool(events) and events[-1]["seq"] < seq})

    def snapshot(led):
        return led.seq(), led.members(), led.removals(), led.policy_doc()
    seq, records, removals, policy = await svc.tables.read(snapshot)
    in_force = RemovalSet()
    for doc in removals:
        try:
            in_force.add(verify_removal(doc, svc.definition, now))
        except NetworkError:
            continue                     # signed by a retired admission key
    in_force.prune(svc.definition, now)
    return _json({"seq": seq, "network": svc.definition.fingerprint,
                  "members": [m.cert.doc for m in records
                              if m.removed is None and m.cert.not_after > now],
                  "removals": [r.doc for r in in_force], "policy": policy})


# --- admin routes ----------------------------------------------------------------------------------
def _opt(body: dict, name: str, kind, default=None):
    value = body.get(name, default)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise Invalid("%s: expected %s" % (name, getattr(kind, "__name__", kind)))
    return value


async def admin_create_invite(request: web.Request) -> web.Response:
    _admin(request)
    body = await srv.read_body(request)
    if not isinstance(body, dict) or set(body) - {"name", "groups", "uses", "expires",
                                                    "directory"}:
        raise Invalid("an invite is {name?, groups?, uses?, expires?, directory?}")
    groups = _opt(body, "groups", list, [])
    directory = _opt(body, "directory", list, None)
    uses = _opt(body, "uses", int, 1)
    ttl = _opt(body, "expires", int, 86400)
    if not 1 <= uses <= MAX_USES or not 60 <= ttl <= MAX_INVITE_TTL:
        raise Invalid("uses must be 1..%d and expires 60..%d seconds" % (MAX_USES, MAX_INVITE_TTL))
    svc = _svc(request)
    now = srv.now_of(request)
    try:
        token, record = create_invite(svc.definition, now, name=_opt(body, "name", str),
                                      groups=groups, uses=uses, ttl=ttl,
                                      directory=directory or None)
        await _change(request, lambda led, _now: J.add_invite(led, record))
    except (NetworkError, TypeError) as exc:
        if isinstance(exc, TypeError):
            exc = FormatError(str(exc), what="invite")
        return refusal(exc)
    log.info("invite %s created (%d use(s))", record.id, record.uses)
    return _json({"token": token.encode(), "invite": record.summary(now)}, 201)


async def admin_invites(request: web.Request) -> web.Response:
    _admin(request)
    now = srv.now_of(request)
    rows = [i.summary(now) for i in await _svc(request).tables.read(lambda led: led.invites())]
    if request.query.get("all") not in ("1", "true", "yes"):
        rows = [r for r in rows if r["status"] == "active"]
    return _json({"invites": rows})


async def admin_revoke_invite(request: web.Request) -> web.Response:
    _admin(request)
    invite_id = request.match_info["id"]
    try:
        revoked = await _change(request, lambda led, now: J.revoke_invite(led, invite_id))
    except NetworkError as exc:
        return refusal(exc)
    log.info("invite %s revoked", revoked.id)
    return _json({"invite": revoked.summary(srv.now_of(request))})


async def admin_members(request: web.Request) -> web.Response:
    _admin(request)
    now = srv.now_of(request)
    records = await _svc(request).tables.read(lambda led: led.members())
    return _json({"members": J.member_rows(records, now)})


def _who(text: str) -> str:
    """A member's name, or its key in standard base64; a key may come URL-safe
    (``-`` and ``_``, as every key in the directory's paths may)."""
    if len(text) == 44 and text.endswith("=") and ("-" in text or "_" in text):
        try:
            raw = base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            return text
        if len(raw) == 32:
            return b64(raw)
    return text


async def admin_remove(request: web.Request) -> web.Response:
    _admin(request)
    who = _who(request.match_info["who"])
    svc = _svc(request)
    try:
        removal, seq = await _change(request, lambda led, now: J.remove(
            led, svc.definition, svc.admission, who, now))
    except NetworkError as exc:
        return refusal(exc)
    log.info("member %s removed from %s (seq %d)", who, svc.definition.name, seq)
    return _json({"removal": removal.doc, "seq": seq})


# --- the network policy (issue 21) -----------------------------------------------------------------
MAX_POLICY_BODY = 2 * P.MAX_SOURCE_SIZE + 1024      # {"source": ...}: the file, JSON-escaped


async def get_policy(request: web.Request) -> web.Response:
    doc = await _svc(request).tables.read(lambda led: led.policy_doc())
    if doc is None:
        return _json({"error": "network %s has no policy: every member keeps its own "
                      "[firewall]" % _svc(request).definition.name, "code": "no_policy"}, 404)
    return _json(doc)


async def _policy_body(request: web.Request) -> Any:
    """The body of a policy set: larger than other requests' (a whole policy
    file), so read here with its own bound and deadline."""
    length = request.content_length
    if length is None or length > MAX_POLICY_BODY:
        raise Invalid("a policy set needs a Content-Length of at most %d bytes" % MAX_POLICY_BODY)
    try:
        raw = await asyncio.wait_for(request.content.readexactly(length), srv.BODY_TIMEOUT)
    except asyncio.TimeoutError:
        raise Invalid("the request body did not arrive within %g s" % srv.BODY_TIMEOUT) from None
    except asyncio.IncompleteReadError:
        raise Invalid("the request body is shorter than its Content-Length") from None
    try:
        body = strict_loads(raw, MAX_POLICY_BODY, "request")
    except NetworkError as exc:
        raise Invalid(str(exc)) from None
    if not isinstance(body, dict) or set(body) != {"source"} or not isinstance(body["source"], str):
        raise Invalid('the body is {"source": "<the policy file, TOML or JSON>"}')
    return body["source"]


async def admin_set_policy(request: web.Request) -> web.Response:
    _admin(request)
    source = await _policy_body(request)
    svc = _svc(request)
    try:
        body = P.parse_policy_source(source)
        policy, seq = await _change(request, lambda led, now: J.set_policy(
            led, svc.definition, svc.admission, body, now))
    except NetworkError as exc:
        return refusal(exc)
    log.info("network policy seq %d set for %s (%d rules, default %s; event %d)", policy.seq,
             svc.definition.name, len(policy.body.rules), policy.body.default, seq)
    return _json({"seq": policy.seq, "issuer": b64(policy.issuer), "issued": policy.issued,
                  "rules": len(policy.body.rules), "default": policy.body.default,
                  "event": seq})


# --- routes and exits (issue 22) -------------------------------------------------------------------
async def post_advertise(request: web.Request) -> web.Response:
    """A member's signed advertisement (network/routes.py): stored; approvals
    it no longer covers are withdrawn in the same transaction."""
    from phantom.network import routes as RT
    _take_write(request)
    body = await srv.read_body(request)
    svc = _svc(request)
    try:
        adv, result = await _change(request, lambda led, now: RT.advertise(
            led, svc.definition, svc.admission, body, now))
    except NetworkError as exc:
        _count(request, "network_refused")
        return refusal(exc)
    log.info("member %s advertises routes %s%s", b64(adv.key),
             ", ".join(map(str, adv.routes)) or "none", " and exit" if adv.exit else "")
    return _json({"advertisement": adv.summary(),
                  "certificate": result.certificate.doc if result is not None else None})


async def admin_routes(request: web.Request) -> web.Response:
    from phantom.network import routes as RT
    _admin(request)
    svc = _svc(request)
    rows = await svc.tables.read(lambda led: RT.listing(led.members(), led.adverts(),
                                                        svc.definition))
    return _json({"routes": rows})


async def _route_body(request: web.Request) -> tuple:
    body = await srv.read_body(request)
    if body is None:
        body = {}
    if not isinstance(body, dict) or set(body) - {"routes", "exit"}:
        raise Invalid('the body is {"routes": [PREFIX...], "exit": true|false}')
    routes = _opt(body, "routes", list, [])
    exit = body.get("exit", False)
    if not isinstance(exit, bool) or len(routes) > 64 or \
            not all(isinstance(r, str) and len(r) <= 50 for r in routes):
        raise Invalid('routes: a list of prefixes (strings); exit: true or false')
    return routes, exit


def _route_change(fn_name: str):
    async def handler(request: web.Request) -> web.Response:
        from phantom.network import routes as RT
        _admin(request)
        who = _who(request.match_info["who"])
        routes, exit = await _route_body(request)
        svc = _svc(request)
        fn = getattr(RT, fn_name)
        try:
            result = await _change(request, lambda led, now: fn(
                led, svc.definition, svc.admission, who, routes, exit, now))
        except NetworkError as exc:
            return refusal(exc)
        c = result.certificate
        log.info("routes of %s %s: now %s%s (serial %d, event %d)", c.name, fn_name + "d",
                 ", ".join(map(str, c.routes)) or "none", ", exit" if c.exit else "", c.serial,
                 result.seq)
        return _json({"certificate": c.summary(), "seq": result.seq})
    return handler


def add_routes(app: web.Application, service: NetworkService) -> None:
    app[SERVICE_KEY] = service
    r = app.router
    r.add_get("/network", get_network)
    r.add_post("/network/join", post_join)
    r.add_post("/network/renew", post_renew)
    r.add_get("/network/members", members)
    r.add_post("/network/members", members)
    r.add_post("/network/admin/invites", admin_create_invite)
    r.add_get("/network/admin/invites", admin_invites)
    r.add_post("/network/admin/invites/{id}/revoke", admin_revoke_invite)
    r.add_get("/network/admin/members", admin_members)
    r.add_post("/network/admin/members/{who}/remove", admin_remove)
    r.add_get("/network/policy", get_policy)
    r.add_post("/network/admin/policy", admin_set_policy)
    r.add_post("/network/advertise", post_advertise)
    r.add_get("/network/admin/routes", admin_routes)
    r.add_post("/network/admin/routes/{who}/approve", _route_change("approve"))
    r.add_post("/network/admin/routes/{who}/revoke", _route_change("revoke"))
