"""phantomd's own routes on its HTTP API (assembled with the operations
routes, opsapi.py, in app.py; the server, the guard and the error statuses
are phantom/http/'s).

====== ======================= ============================================
POST   /open/{target}          open a tunnel; target is ``IP:PORT``,
                               ``[IPv6]:PORT``, ``HOST:PORT`` (a DNS name)
                               or a peer name; optional body
                               ``{"public_key": "...", "name": "...",
                               "allowed_ips": ["10.9.0.2/32"]}``
POST   /close/{peer}           close the tunnel to a peer (name or public
                               key, URL-encoded)
GET    /status                 the daemon's status
GET    /peers                  ``{"peers": [...]}``
GET    /firewall               the firewall rules in force
PUT    /firewall               replace the firewall rules (JSON object body)
GET    /dns                    the names the name service answers ([dns])
GET    /exit                   the exit in use and the peers offering one
PUT    /exit                   use an exit: ``{"peer": "NAME"}``
DELETE /exit                   stop using an exit
GET    /openapi.json           an OpenAPI 3 description of the API
====== ======================= ============================================

Each handler checks its input, then calls the controller
(:class:`phantom.node.controller.Controller`), whose domain errors the
server answers with their statuses (phantom/http/statuses.py).  A GET on a
state-changing route is refused (405): a web page in a local browser can
fire GETs at localhost but cannot set the token's header.
"""

from __future__ import annotations

from typing import Any, Optional

from aiohttp import web

from ..errors import ConfigError, Invalid
from ..http.app import OPENAPI_KEY, Route, add_route_table, controller, paths_of
from ..http.openapi import OBJ, err, in_path, json_body, ok, operation
from ..http.server import call, json_response, read_json
from ..syntax import PEER_NAME, PEER_NAME_RULE, parse_peer_endpoint, parse_network


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not PEER_NAME.match(value):
        raise Invalid("%s is not a valid peer name (%s)" % (what, PEER_NAME_RULE))
    return value


# --- handlers ---------------------------------------------------------------------------------
def answer(method: str):
    """A handler that takes no input and answers with what the controller's
    ``method()`` returns."""
    async def handler(request: web.Request) -> web.Response:
        return json_response(await call(getattr(controller(request), method)()))
    handler.__name__ = handler.__qualname__ = method
    return handler


get_status = answer("status")
get_dns = answer("dns")
get_firewall = answer("firewall")
renew_certificate = answer("renew_certificate")
get_exit = answer("exit_status")
delete_exit = answer("exit_off")


async def open_tunnel(request: web.Request) -> web.Response:
    target = request.match_info["target"]
    body = await read_json(request, required=False)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object like {\"public_key\": \"...\", \"name\": \"...\"}")
    unknown = set(body) - {"public_key", "name", "allowed_ips", "protocol", "groups"}
    if unknown:
        raise Invalid("unknown field(s) in body: %d (known: public_key, name, allowed_ips, protocol, "
                      "groups)" % len(unknown))
    public_key = body.get("public_key")
    if public_key is not None:
        from ..keys import KeyFormatError, decode_public_key
        try:
            decode_public_key(public_key)
        except KeyFormatError as exc:
            raise Invalid("public_key: %s" % exc) from None
    name = body.get("name")
    if name is not None:
        _check_name(name, "name")
    extra = {}
    if body.get("allowed_ips") is not None:
        nets = body["allowed_ips"]
        if not isinstance(nets, list) or len(nets) > 256:
            raise Invalid("allowed_ips must be a list of CIDR strings like \"10.9.0.2/32\"")
        try:
            extra["allowed_ips"] = [str(parse_network(n, "allowed_ips[%d]" % i))
                                    for i, n in enumerate(nets)]
        except ConfigError as exc:
            raise Invalid(str(exc)) from None
    if body.get("protocol") is not None:
        if body["protocol"] not in ("phantom", "wireguard"):
            raise Invalid("protocol must be \"phantom\" or \"wireguard\"")
        extra["protocol"] = body["protocol"]
    if body.get("groups") is not None:
        from .config import groups
        try:
            extra["groups"] = groups(body["groups"], "groups")
        except ConfigError as exc:
            raise Invalid(str(exc)) from None

    endpoint: Optional[tuple[str, int]]
    if PEER_NAME.match(target) and not _looks_like_address(target):
        # `phantom open NAME`: the controller finds the endpoint (config or directory).
        if name is not None and name != target:
            raise Invalid("the name in the body differs from the peer name in the path")
        endpoint, name = None, target
    else:
        try:
            endpoint = parse_peer_endpoint(target, "endpoint")
        except ConfigError:
            raise Invalid("malformed endpoint: write IP:PORT (port 1..65535), [IPv6]:PORT "
                          "with a unicast address or HOSTNAME:PORT with a DNS name, or a "
                          "peer name") from None
    # allowed_ips and protocol are passed only when given, so a controller may omit the keywords.
    result = await call(controller(request).open(endpoint, public_key, name, **extra))
    return json_response(result)


def _looks_like_address(text: str) -> bool:
    head = text.partition(":")[0]
    return all(c.isdigit() or c == "." for c in head)


async def close_tunnel(request: web.Request) -> web.Response:
    peer = request.match_info["peer"]
    if not peer or len(peer) > 128 or not peer.isprintable():
        raise Invalid("malformed peer name")
    result = await call(controller(request).close(peer))
    return json_response(result)


async def get_peers(request: web.Request) -> web.Response:
    return json_response({"peers": list(await call(controller(request).peers()))})


async def put_firewall(request: web.Request) -> web.Response:
    rules = await read_json(request, required=True)
    if not isinstance(rules, dict):
        raise Invalid("body must be a JSON object holding the firewall rules")
    return json_response(await call(controller(request).set_firewall(rules)))


async def put_exit(request: web.Request) -> web.Response:
    body = await read_json(request, required=True)
    if not isinstance(body, dict) or set(body) != {"peer"}:
        raise Invalid("body must be {\"peer\": \"NAME\"}: the peer to use as exit")
    return json_response(await call(controller(request).exit_use(_check_name(body["peer"], "peer"))))


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_KEY])


# --- the part -------------------------------------------------------------------------------------
def openapi_schemas() -> dict:
    return {
        "OpenRequest": {"type": "object", "additionalProperties": False,
                        "properties": {
                            "public_key": {"type": "string",
                                           "description": "the peer's base64 X25519 key"},
                            "name": {"type": "string", "pattern": PEER_NAME.pattern},
                            "allowed_ips": {"type": "array", "maxItems": 256,
                                            "items": {"type": "string"},
                                            "description": "CIDR prefixes routed to a "
                                                           "new peer"},
                            "protocol": {"type": "string", "enum": ["phantom", "wireguard"],
                                         "description": "what a new peer speaks "
                                                        "(default phantom)"},
                            "groups": {"type": "array", "maxItems": 32,
                                       "items": {"type": "string", "maxLength": 32},
                                       "description": "firewall groups of a new peer "
                                                      "(src_group/dst_group in rules)"}}},
        "Peer": OBJ,
        "Firewall": OBJ,
    }


ROUTES = (
    Route("POST", "/open/{target}", open_tunnel, operation(
        "Open a tunnel to IP:PORT, [IPv6]:PORT, HOSTNAME:PORT or a peer name", "open",
        {"200": ok("the tunnel is up", OBJ),
         "404": err("no such peer or no key known for it"),
         "409": err("conflict with an existing peer"),
         "504": err("the peer did not answer the handshake")},
        mutation=True, parameters=in_path("target", example="192.0.2.7:9000"),
        requestBody=json_body({"$ref": "#/components/schemas/OpenRequest"}, required=False))),
    Route("POST", "/close/{peer}", close_tunnel, operation(
        "Close the tunnel to a peer", "close",
        {"200": ok("closed", OBJ), "404": err("no such peer")},
        mutation=True, parameters=in_path("peer", example="bob"))),
    Route("GET", "/status", get_status, operation("Daemon status", "status",
                                                  {"200": ok("status", OBJ)})),
    Route("GET", "/peers", get_peers, operation("Peers and their sessions", "peers", {"200": ok("peers", {
        "type": "object", "required": ["peers"],
        "properties": {"peers": {"type": "array", "items": {"$ref": "#/components/schemas/Peer"}}}})})),
    Route("GET", "/firewall", get_firewall, operation(
        "Firewall rules in force", "getFirewall",
        {"200": ok("rules", {"$ref": "#/components/schemas/Firewall"})})),
    Route("GET", "/dns", get_dns, operation(
        "The name service: domain, addresses served on, the names and their addresses, counters",
        "dns", {"200": ok("names", OBJ)})),
    Route("PUT", "/firewall", put_firewall, operation(
        "Replace the firewall rules", "setFirewall",
        {"200": ok("the rules now in force", OBJ),
         "409": err("the rules conflict with the daemon's state")},
        mutation=True, requestBody=json_body({"$ref": "#/components/schemas/Firewall"}))),
    Route("POST", "/network/renew", renew_certificate, operation(
        "Renew this member's network certificate now (phantomd renews by itself at 2/3 of its "
        "lifetime)", "renewCertificate",
        {"200": ok("the new certificate's serial and validity", OBJ),
         "404": err("this node is not a member of a network"),
         "503": err("no directory renewed it")},
        mutation=True)),
    Route("GET", "/exit", get_exit, operation(
        "The exit in use, the peers that offer one, DNS through it", "getExit",
        {"200": ok("exit", OBJ)})),
    Route("PUT", "/exit", put_exit, operation(
        "Send all traffic and DNS through a peer that offers exit", "useExit",
        {"200": ok("the exit now in use", OBJ),
         "404": err("no such peer"),
         "409": err("no TUN device or helper, or the kernel refused the routes")},
        mutation=True, requestBody=json_body({
            "type": "object", "additionalProperties": False, "required": ["peer"],
            "properties": {"peer": {"type": "string", "pattern": PEER_NAME.pattern}}}))),
    Route("DELETE", "/exit", delete_exit, operation(
        "Stop using an exit: traffic goes direct again", "exitOff",
        {"200": ok("no exit in use", OBJ)}, mutation=True)),
    Route("GET", "/openapi.json", get_openapi, {
        "summary": "This description", "operationId": "openapi",
        "responses": {"200": ok("OpenAPI 3 document", OBJ)}}),
)


def add_routes(app: web.Application) -> None:
    add_route_table(app, ROUTES)


def openapi_paths() -> dict:
    return paths_of(ROUTES)
