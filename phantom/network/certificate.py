"""Member certificates: who is in the network, with which addresses.

A certificate binds a member's X25519 key (its Noise static key) to a name,
one IPv4 address (/32) and one IPv6 address (/128) inside the network's
prefixes, groups, approved routes and the exit flag (issue 22), for a
bounded time, signed by an admission key the definition lists.  A member's
allowed IPs are exactly the certificate's addresses plus its approved
routes: no record can widen them or take another member's.

It travels inside the Noise initiation and response payloads (encrypted,
bound to the handshake), so it is compact canonical JSON::

    {"exit":false,"exp":1762592000,"groups":["laptops"],"ip4":"100.87.0.7",
     "ip6":"fd3c:9a41:7e02::6457:7","iss":"<Ed25519 admission key>","key":"<X25519>",
     "name":"alice","nbf":1760000000,"net":"<fingerprint>","routes":[],"serial":42,
     "sig":"<Ed25519 signature>","since":1750000000,"v":1}

(``nbf``/``exp``/``iss``: not before, not after, issuer, as in JWT.)  Every
field is required; lists are sorted, each item once.  The size limit is
MAX_CERT_SIZE = 640 bytes of canonical JSON, enforced on issue and on parse.
With every fixed field at its longest (a 63-character name, 15- and
39-character addresses, 16-digit serial, 11-digit times) and no groups or
routes a certificate is 515 bytes, which leaves GROUP_ROUTE_BUDGET (125) bytes
for groups and routes (up to MAX_GROUPS of up to 32 characters and
MAX_ROUTES): :func:`check_budget` says whether a name, groups and routes fit
whatever addresses and serial the member gets, so an invite or a route
approval that could not be issued is refused when it is made.  A typical
certificate (short name, two groups) is about 440 bytes.

Verification (:func:`verify_certificate`), in this order, each failure its own
:class:`Reason`: malformed -> wrong network -> the issuer listed -> the issuer
unexpired -> the signature -> not yet valid (``not_before`` more than
``skew`` seconds ahead) -> expired -> lifetime within the definition's ->
addresses inside the prefixes -> routes outside them -> not removed -> (when
given) the key that presented it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from . import names
from .canonical import (KEY_SIZE, SEQ_MAX, SIG_SIZE, TIME_MAX, b64, bool_field, bytes_field,
                        canonical, int_field, list_field, object_fields, strict_loads,
                        version_field)
from .canonical import signed_bytes  # noqa: F401  (certificate.signed_bytes, as before)
from .definition import Definition
from .errors import FormatError, Reason, Refused
from .keys import (CERTIFICATE_DOMAIN, SigningKey, fingerprint_field, key_field, sign_document,
                   valid_x25519, verify_document)

VERSION = 1
WHAT = "certificate"
MAX_CERT_SIZE = 640           # bytes of canonical JSON, with every field at its longest
MAX_GROUPS = 8
MAX_ROUTES = 4
MAX_SKEW = 120                # seconds a not_before may be ahead of the verifier's clock
FIELDS = ("v", "net", "key", "name", "ip4", "ip6", "groups", "routes", "exit", "serial",
          "since", "nbf", "exp", "iss", "sig")
_NOT_ROUTABLE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fe80::/10", "ff00::/8"))


@dataclass(frozen=True)
class Certificate:
    network: str                       # the network's fingerprint
    key: bytes                         # the member's X25519 public key
    name: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    groups: tuple                      # sorted group names
    routes: tuple                      # sorted approved prefixes (issue 22)
    exit: bool                         # approved exit node (issue 22)
    serial: int
    since: int                         # when the member joined (kept across renewals)
    not_before: int
    not_after: int
    issuer: bytes                      # the admission key that signed it
    sig: bytes = field(repr=False)
    doc: dict = field(default_factory=dict, repr=False, compare=False)

    def encode(self) -> bytes:
        """The canonical bytes (what travels in the handshake and the watch stream)."""
        return canonical(self.doc)

    @property
    def addresses(self) -> tuple:
        """The member's own addresses as networks: (IPv4 /32, IPv6 /128)."""
        return (ipaddress.ip_network(self.ipv4), ipaddress.ip_network(self.ipv6))

    def allowed_ips(self) -> tuple:
        """Exactly what the member may send from / receive for: its addresses
        and its approved routes (an exit's 0.0.0.0/0 is added only by a client
        that picked it, issue 22)."""
        return self.addresses + self.routes

    @property
    def priority(self) -> tuple:
        """The order conflicts are settled in: the earlier member, then the lower key."""
        return (self.since, self.key)

    @property
    def version(self) -> tuple:
        """The order two certificates of one key are compared in: the later wins."""
        return (self.not_before, self.serial)

    def summary(self) -> dict:
        return {"name": self.name, "public_key": b64(self.key), "ipv4": str(self.ipv4),
                "ipv6": str(self.ipv6), "groups": list(self.groups),
                "routes": [str(r) for r in self.routes], "exit": self.exit,
                "serial": self.serial, "since": self.since, "not_before": self.not_before,
                "not_after": self.not_after, "issuer": b64(self.issuer),
                "network": self.network}


class Certified:
    """Something known by its certificate (a dataclass with a ``cert``): its
    key and name are the certificate's."""

    cert: Certificate

    @property
    def key(self) -> bytes:
        return self.cert.key

    @property
    def name(self) -> str:
        return self.cert.name


def _sorted_unique(values: list, path: str, what: str) -> None:
    if values != sorted(set(values)):
        raise FormatError("%s must be sorted, each once" % what, path)


def _route(value: Any, path: str) -> ipaddress._BaseNetwork:
    net = names.network(value, path)
    if net.prefixlen == 0:
        raise FormatError("a default route is the exit flag, not a route", path)
    for bad in _NOT_ROUTABLE:
        if net.version == bad.version and net.overlaps(bad):
            raise FormatError("%s overlaps %s, which is never routed" % (value, bad), path)
    return net


route_field = _route     # one approved or advertised prefix (network/routes.py)


def _from_doc(doc: Any) -> Certificate:
    """Shape and canonical forms only (no signature, no definition)."""
    object_fields(doc, FIELDS)
    version_field(doc["v"], VERSION)
    key = key_field(doc["key"], "key", valid_x25519, "is not a usable X25519 key (small order)")
    groups = list_field(doc["groups"], "groups", MAX_GROUPS)
    gs = [names.group(g, "groups[%d]" % i) for i, g in enumerate(groups)]
    _sorted_unique(gs, "groups", "groups")
    routes = list_field(doc["routes"], "routes", MAX_ROUTES)
    rs = [_route(r, "routes[%d]" % i) for i, r in enumerate(routes)]
    if rs != sorted(set(rs), key=lambda n: (n.version, n)):
        raise FormatError("routes must be sorted (IPv4 first), each once", "routes")
    for i, a in enumerate(rs):
        for b in rs[i + 1:]:
            if a.version == b.version and a.overlaps(b):
                raise FormatError("%s and %s overlap" % (a, b), "routes")
    not_before = int_field(doc["nbf"], "nbf", 0, TIME_MAX)
    not_after = int_field(doc["exp"], "exp", 0, TIME_MAX)
    if not_after <= not_before:
        raise FormatError("must be after nbf", "exp")
    since = int_field(doc["since"], "since", 0, TIME_MAX)
    if since > not_before:
        raise FormatError("must not be after nbf", "since")
    return Certificate(
        network=fingerprint_field(doc["net"], "net"), key=key,
        name=names.label(doc["name"], "name"),
        ipv4=names.address(doc["ip4"], "ip4", 4), ipv6=names.address(doc["ip6"], "ip6", 6),
        groups=tuple(gs), routes=tuple(rs), exit=bool_field(doc["exit"], "exit"),
        serial=int_field(doc["serial"], "serial", 1, SEQ_MAX), since=since,
        not_before=not_before, not_after=not_after,
        issuer=bytes_field(doc["iss"], "iss", KEY_SIZE),
        sig=bytes_field(doc["sig"], "sig", SIG_SIZE), doc=doc)


def parse_certificate(raw: Any) -> Certificate:
    """Decode a certificate (bytes, text or a parsed object) and check its
    form -- NOT its signature or validity: use :func:`verify_certificate`."""
    if isinstance(raw, dict):
        doc = raw
    else:
        doc = strict_loads(raw, MAX_CERT_SIZE, WHAT)
    try:
        cert = _from_doc(doc)
    except FormatError as exc:
        raise exc.about(WHAT) from None
    if not isinstance(raw, dict):
        # A certificate travels as its canonical bytes: any other spelling of
        # the same object (whitespace, escapes, key order) is refused, so one
        # certificate has exactly one encoding (nothing to vary in a handshake
        # payload or a watch event; hashes and caches key on the bytes).
        given = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
        if given != canonical(doc):
            raise FormatError("not in canonical form (compact, sorted keys, no escapes "
                              "beyond JSON's own)", what=WHAT)
    if len(canonical(doc)) > MAX_CERT_SIZE:
        raise FormatError("%d bytes; at most %d" % (len(canonical(doc)), MAX_CERT_SIZE), what=WHAT)
    return cert


def _size(name: str, groups: Iterable[str], routes: Iterable[Any], exit: bool) -> int:
    """The size of a certificate with these values and every other field at its longest."""
    doc = {"v": VERSION, "net": "a" * 32, "key": b64(bytes(KEY_SIZE)), "name": name,
           "ip4": "255.255.255.255", "ip6": "ffff:" * 7 + "ffff", "groups": sorted(set(groups)),
           "routes": [str(r) for r in routes], "exit": bool(exit), "serial": SEQ_MAX,
           "since": TIME_MAX, "nbf": TIME_MAX, "exp": TIME_MAX, "iss": b64(bytes(KEY_SIZE)),
           "sig": b64(bytes(SIG_SIZE))}
    return len(canonical(doc))


def check_budget(name: str, groups: Iterable[str] = (), routes: Iterable[Any] = (),
                 exit: bool = False) -> int:
    """The worst-case size of a certificate carrying ``name``, ``groups``,
    ``routes`` and ``exit``, whatever addresses, serial and times it gets;
    FormatError when it could exceed MAX_CERT_SIZE (or a value is invalid)."""
    groups, routes = list(groups), list(routes)
    names.label(name, "name")
    if len(groups) > MAX_GROUPS:
        raise FormatError("at most %d groups" % MAX_GROUPS, "groups", WHAT)
    for i, g in enumerate(groups):
        names.group(g, "groups[%d]" % i)
    if len(routes) > MAX_ROUTES:
        raise FormatError("at most %d routes" % MAX_ROUTES, "routes", WHAT)
    size = _size(name, groups, routes, exit)
    if size > MAX_CERT_SIZE:
        raise FormatError("a certificate with this name, these groups and routes could be %d "
                          "bytes; at most %d: use fewer or shorter groups or routes"
                          % (size, MAX_CERT_SIZE), "groups", WHAT)
    return size


def in_network(cert: Certificate, definition: Definition) -> Optional[Refused]:
    """Why the certificate's addresses or routes do not fit ``definition``, or None."""
    v4, v6 = definition.ipv4, definition.ipv6
    ok4 = cert.ipv4 in v4 and cert.ipv4 not in (v4.network_address, v4.broadcast_address)
    ok6 = cert.ipv6 in v6 and cert.ipv6 != v6.network_address
    if not (ok4 and ok6):
        return Refused(Reason.OUTSIDE_PREFIX, WHAT, definition.name,
                       "%s, %s not host addresses of %s, %s" % (cert.ipv4, cert.ipv6, v4, v6))
    for r in cert.routes:
        own = v4 if r.version == 4 else v6
        if r.overlaps(own):
            return Refused(Reason.BAD_ROUTE, WHAT, definition.name,
                           "%s overlaps %s" % (r, own))
    return None


def verify_certificate(raw: Any, definition: Definition, now: float, *,
                       removals: Any = None, key: Optional[bytes] = None,
                       skew: float = MAX_SKEW) -> Certificate:
    """A certificate that holds for ``definition`` at time ``now``, or Refused.

    ``removals`` is anything with ``removes(cert) -> Removal | None`` (a
    :class:`~phantom.network.removal.RemovalSet`); ``key``, when given, is
    the X25519 key that presented the certificate (the handshake's static
    key): another key gets Reason.WRONG_KEY."""
    cert = parse_certificate(raw)
    net = definition.name
    if cert.network != definition.fingerprint:
        raise Refused(Reason.WRONG_NETWORK, WHAT, net, "it is for network %s" % cert.network)
    definition.admission_key(cert.issuer, now, WHAT)
    if not verify_document(cert.issuer, CERTIFICATE_DOMAIN, cert.doc, cert.sig):
        raise Refused(Reason.BAD_SIGNATURE, WHAT, net)
    if cert.not_before > now + skew:
        raise Refused(Reason.NOT_YET_VALID, WHAT, net,
                      "valid from %d, %d s from now" % (cert.not_before, cert.not_before - now))
    if cert.not_after <= now:
        raise Refused(Reason.EXPIRED, WHAT, net,
                      "at %d, %d s ago" % (cert.not_after, now - cert.not_after))
    if cert.not_after - cert.not_before > definition.cert_lifetime:
        raise Refused(Reason.LIFETIME, WHAT, net, "%d s; %s allows %d s"
                      % (cert.not_after - cert.not_before, net, definition.cert_lifetime))
    problem = in_network(cert, definition)
    if problem is not None:
        raise problem
    if removals is not None:
        removal = removals.removes(cert)
        if removal is not None:
            raise Refused(Reason.REMOVED, WHAT, net, "at %d" % removal.time)
    if key is not None and bytes(key) != cert.key:
        raise Refused(Reason.WRONG_KEY, WHAT, net, "it is for %s" % b64(cert.key))
    return cert


def issue_certificate(definition: Definition, admission: SigningKey, *, key: bytes, name: str,
                      ipv4: Any, ipv6: Any, serial: int, now: float, groups: Iterable[str] = (),
                      routes: Iterable[Any] = (), exit: bool = False,
                      since: Optional[int] = None, lifetime: Optional[int] = None) -> Certificate:
    """Sign a certificate with ``admission`` (the directory's day-to-day key).

    Valid from ``now`` for ``lifetime`` (default and maximum: the
    definition's), never past the admission key's own expiry.  Everything is
    checked as a verifier will (FormatError / Refused naming the field)."""
    ak = definition.admission_key(admission.public, now, WHAT)
    life = definition.cert_lifetime if lifetime is None else int(lifetime)
    if not 0 < life <= definition.cert_lifetime:
        raise ValueError("lifetime must be 1..%d s" % definition.cert_lifetime)
    not_before = int(now)
    not_after = min(not_before + life, ak.expires)
    rs = sorted({ipaddress.ip_network(r) if not isinstance(r, ipaddress._BaseNetwork) else r
                 for r in routes}, key=lambda n: (n.version, n))
    body = {"v": VERSION, "net": definition.fingerprint, "key": b64(key), "name": name,
            "ip4": str(ipv4), "ip6": str(ipv6), "groups": sorted(set(groups)),
            "routes": [str(r) for r in rs], "exit": bool(exit), "serial": serial,
            "since": int(now) if since is None else int(since),
            "nbf": not_before, "exp": not_after, "iss": b64(admission.public)}
    doc = sign_document(admission, CERTIFICATE_DOMAIN, body)
    size = len(canonical(doc))
    if size > MAX_CERT_SIZE:
        raise FormatError("the certificate would be %d bytes; at most %d: use fewer or shorter "
                          "groups or routes" % (size, MAX_CERT_SIZE), "groups", WHAT)
    cert = parse_certificate(doc)
    problem = in_network(cert, definition)
    if problem is not None:
        raise problem
    return cert


# what is left for groups and routes once every other field is at its longest
GROUP_ROUTE_BUDGET = MAX_CERT_SIZE - _size("a" * names.LABEL_MAX, (), (), False)
