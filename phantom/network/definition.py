"""The network definition: what a network is, signed by its authority.

A definition names the network, its DNS domain, its two prefixes (an IPv4
prefix inside 10/8, 172.16/12, 192.168/16 or 100.64/10 -- by default a
random /16 of 100.64.0.0/10 -- and a random RFC 4193 ULA /48), the
directories, rendezvous and relays members use, the admission keys allowed
to sign certificates, removals and policies (each with an expiry), the
certificate lifetime, and a ``seq`` (a higher one replaces a lower one).
The authority signs it; members pin the authority by the network's
fingerprint (in the invite token), so a directory cannot hand them another
network's definition, nor change this one.

Document (canonical JSON; every field required)::

    {"admission": [{"expires": 1767225600, "key": "<Ed25519, base64>"}],
     "authority": "<Ed25519, base64>", "cert_lifetime": 2592000,
     "directory": ["https://dir.example.com"], "domain": "corp.internal",
     "ipv4": "100.87.0.0/16", "ipv6": "fd3c:9a41:7e02::/48", "issued": 1760000000,
     "name": "corp", "relays": [{"endpoint": "198.51.100.7:51820", "key": "<X25519>"}],
     "rendezvous": [...], "seq": 1, "sig": "<Ed25519 signature, base64>", "v": 1}
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Optional

from phantom import crypto

from . import names
from .canonical import (SEQ_MAX, SIG_SIZE, TIME_MAX, b64, bytes_field, canonical,
                        int_field, list_field, object_fields, strict_loads, version_field)
from .canonical import signed_bytes  # noqa: F401  (definition.signed_bytes, as before)
from .errors import FormatError, Reason, Refused
from .keys import (DEFINITION_DOMAIN, SigningKey, fingerprint, key_field, sign_document,
                   valid_ed25519, valid_x25519, verify_document)

VERSION = 1
WHAT = "network definition"
MAX_DEFINITION_SIZE = 32 * 1024
MAX_DIRECTORIES = 8
MAX_SERVERS = 16                   # rendezvous, and relays, each
MAX_ADMISSION_KEYS = 8
MIN_CERT_LIFETIME = 3600
MAX_CERT_LIFETIME = 400 * 86400
DEFAULT_CERT_LIFETIME = 30 * 86400
DEFAULT_ADMISSION_LIFETIME = 365 * 86400
IPV4_SPACES = tuple(ipaddress.ip_network(n) for n in
                    ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
IPV4_DEFAULT_SPACE = ipaddress.ip_network("100.64.0.0/10")
IPV4_MIN_LEN, IPV4_MAX_LEN = 8, 28
ULA_SPACE = ipaddress.ip_network("fd00::/8")
FIELDS = ("v", "name", "domain", "authority", "ipv4", "ipv6", "directory", "rendezvous",
          "relays", "admission", "cert_lifetime", "seq", "issued", "sig")


@dataclass(frozen=True)
class _Listed:
    """A key listed in the definition with one more field (its subclass's)."""

    key: bytes

    def to_doc(self) -> dict:
        """Its document form, keys sorted: the key in base64, the other field as is."""
        return {f.name: b64(self.key) if f.name == "key" else getattr(self, f.name)
                for f in sorted(fields(self), key=lambda f: f.name)}


@dataclass(frozen=True)
class Server(_Listed):
    """A rendezvous or relay: its X25519 key and "host:port"."""

    endpoint: str


@dataclass(frozen=True)
class AdmissionKey(_Listed):
    """An Ed25519 key that may sign certificates, removals and policies until ``expires``."""

    expires: int


@dataclass(frozen=True)
class Definition:
    name: str
    domain: str
    authority: bytes
    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network
    directory: tuple
    rendezvous: tuple                  # (Server, ...)
    relays: tuple                      # (Server, ...)
    admission: tuple                   # (AdmissionKey, ...)
    cert_lifetime: int
    seq: int
    issued: int
    sig: bytes = field(repr=False)
    doc: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.authority)

    def encode(self) -> bytes:
        """The signed document's canonical bytes (what GET /network serves)."""
        return canonical(self.doc)

    def admission_key(self, key: bytes, now: float, what: str = "certificate") -> AdmissionKey:
        """The listed, unexpired admission key ``key``; else Refused
        (UNKNOWN_ISSUER or ISSUER_EXPIRED) about a ``what``."""
        for ak in self.admission:
            if ak.key == key:
                if ak.expires <= now:
                    raise Refused(Reason.ISSUER_EXPIRED, what, self.name,
                                  "admission key %s expired at %d" % (b64(key), ak.expires))
                return ak
        raise Refused(Reason.UNKNOWN_ISSUER, what, self.name, "issuer %s" % b64(key))

    def summary(self) -> dict:
        """Public, JSON-friendly view (CLI, API)."""
        return {"name": self.name, "domain": self.domain, "fingerprint": self.fingerprint,
                "ipv4": str(self.ipv4), "ipv6": str(self.ipv6),
                "directory": list(self.directory), "seq": self.seq, "issued": self.issued,
                "cert_lifetime": self.cert_lifetime,
                "rendezvous": [s.to_doc() for s in self.rendezvous],
                "relays": [s.to_doc() for s in self.relays],
                "admission": [a.to_doc() for a in self.admission]}


# --- choosing prefixes -------------------------------------------------------------------------

def random_ipv4_prefix(random_bytes: Callable[[int], bytes] = crypto.random_bytes,
                       prefixlen: int = 16) -> ipaddress.IPv4Network:
    """A random /``prefixlen`` inside 100.64.0.0/10 (the CGNAT range Tailscale
    and others use: rarely a LAN's)."""
    if not 10 <= prefixlen <= IPV4_MAX_LEN:
        raise ValueError("prefix length must be 10..%d" % IPV4_MAX_LEN)
    space = IPV4_DEFAULT_SPACE
    bits = prefixlen - space.prefixlen
    pick = int.from_bytes(random_bytes(4), "big") % (1 << bits) if bits else 0
    base = int(space.network_address) | (pick << (32 - prefixlen))
    return ipaddress.IPv4Network((base, prefixlen))


def random_ula_prefix(random_bytes: Callable[[int], bytes] = crypto.random_bytes
                      ) -> ipaddress.IPv6Network:
    """fdXX:XXXX:XXXX::/48 with a random 40-bit global ID (RFC 4193 section 3.2)."""
    gid = int.from_bytes(random_bytes(5), "big")
    return ipaddress.IPv6Network(((0xFD << 120) | (gid << 80), 48))


# --- field checks ------------------------------------------------------------------------------

def check_ipv4_prefix(value: Any, path: str = "ipv4") -> ipaddress.IPv4Network:
    net = names.network(value, path, 4)
    if not IPV4_MIN_LEN <= net.prefixlen <= IPV4_MAX_LEN:
        raise FormatError("%s: the prefix length must be %d..%d" % (value, IPV4_MIN_LEN,
                                                                     IPV4_MAX_LEN), path)
    if not any(net.subnet_of(space) for space in IPV4_SPACES):
        raise FormatError("%s is not inside %s" % (value, ", ".join(map(str, IPV4_SPACES))),
                          path)
    return net


def check_ipv6_prefix(value: Any, path: str = "ipv6") -> ipaddress.IPv6Network:
    net = names.network(value, path, 6)
    if net.prefixlen != 48 or not net.subnet_of(ULA_SPACE):
        raise FormatError("%s is not a ULA /48 (fdXX:XXXX:XXXX::/48, RFC 4193)" % value, path)
    return net


def _listed(value: Any, path: str, max_items: int, other: str, valid: Callable[[bytes], bool],
            curve: str, make: Callable[[bytes, Any, str], Any]) -> tuple:
    """A list of {"key", ``other``} objects: each key usable on ``curve``
    (``valid``) and listed once; ``make(key, other's value, its path)`` builds one."""
    out, seen = [], set()
    for i, item in enumerate(list_field(value, path, max_items)):
        where = "%s[%d]" % (path, i)
        object_fields(item, ("key", other), path=where)
        key = key_field(item["key"], where + ".key", valid, "is not a usable %s key" % curve)
        if key in seen:
            raise FormatError("key listed twice", where + ".key")
        seen.add(key)
        out.append(make(key, item[other], where + "." + other))
    return tuple(out)


def _servers(value: Any, path: str) -> tuple:
    return _listed(value, path, MAX_SERVERS, "endpoint", valid_x25519, "X25519",
                   lambda key, v, where: Server(key, names.endpoint(v, where)))


def _admission(value: Any, path: str = "admission") -> tuple:
    return _listed(value, path, MAX_ADMISSION_KEYS, "expires", valid_ed25519, "Ed25519",
                   lambda key, v, where: AdmissionKey(key, int_field(v, where, 1, TIME_MAX)))


def _directories(value: Any) -> tuple:
    urls = tuple(names.url(u, "directory[%d]" % i)
                 for i, u in enumerate(list_field(value, "directory", MAX_DIRECTORIES)))
    if len(set(urls)) != len(urls):
        raise FormatError("a URL is listed twice", "directory")
    return urls


def _from_doc(doc: Any) -> Definition:
    """Shape and canonical forms (no signature check)."""
    object_fields(doc, FIELDS)
    version_field(doc["v"], VERSION)
    authority = key_field(doc["authority"], "authority", valid_ed25519, "is not a usable Ed25519 key")
    return Definition(
        name=names.label(doc["name"], "name"),
        domain=names.domain(doc["domain"], "domain"),
        authority=authority,
        ipv4=check_ipv4_prefix(doc["ipv4"]),
        ipv6=check_ipv6_prefix(doc["ipv6"]),
        directory=_directories(doc["directory"]),
        rendezvous=_servers(doc["rendezvous"], "rendezvous"),
        relays=_servers(doc["relays"], "relays"),
        admission=_admission(doc["admission"]),
        cert_lifetime=int_field(doc["cert_lifetime"], "cert_lifetime", MIN_CERT_LIFETIME,
                                MAX_CERT_LIFETIME),
        seq=int_field(doc["seq"], "seq", 1, SEQ_MAX),
        issued=int_field(doc["issued"], "issued", 0, TIME_MAX),
        sig=bytes_field(doc["sig"], "sig", SIG_SIZE),
        doc=doc)


def _checked(doc: dict) -> Definition:
    """Shape, canonical forms and size (no signature check)."""
    try:
        defn = _from_doc(doc)
    except FormatError as exc:
        raise exc.about(WHAT) from None
    if len(canonical(doc)) > MAX_DEFINITION_SIZE:
        raise FormatError("more than %d bytes" % MAX_DEFINITION_SIZE, what=WHAT)
    return defn


def parse_definition(raw: Any, fingerprint_: Optional[str] = None) -> Definition:
    """Verify a definition (JSON bytes/text or a parsed object): shape,
    canonical forms, the authority's signature, and -- when ``fingerprint_``
    is given (from an invite token or the member's pinned state) -- that it is
    that network's authority.  Raises Refused (FormatError when malformed)."""
    doc = raw if isinstance(raw, dict) else strict_loads(raw, MAX_DEFINITION_SIZE, WHAT)
    defn = _checked(doc)
    if fingerprint_ is not None and defn.fingerprint != fingerprint_:
        raise Refused(Reason.WRONG_AUTHORITY, WHAT, fingerprint_,
                      "it is network %s (%s)" % (defn.fingerprint, defn.name))
    if not verify_document(defn.authority, DEFINITION_DOMAIN, doc, defn.sig):
        raise Refused(Reason.BAD_SIGNATURE, WHAT, defn.name)
    return defn


def _sign(authority: SigningKey, body: dict) -> Definition:
    return _checked(sign_document(authority, DEFINITION_DOMAIN, body))


def _docs(items: Iterable, kind: type, other: str, dicts: bool = False) -> list:
    """Document forms of ``kind`` objects or (key, ``other``) pairs (a key as
    bytes or base64); ``dicts``: documents given as they are, too."""
    out = []
    for item in items:
        if isinstance(item, kind):
            out.append(item.to_doc())
        elif dicts and isinstance(item, dict):
            out.append(dict(item))
        else:
            key, value = item
            out.append({other: value, "key": b64(key) if isinstance(key, bytes) else key})
    return out


def _server_docs(items: Iterable) -> list:
    return _docs(items, Server, "endpoint", dicts=True)


def _admission_docs(items: Iterable) -> list:
    return _docs(items, AdmissionKey, "expires")


def make_definition(authority: SigningKey, name: str, now: float, *,
                    domain: Optional[str] = None, ipv4: Any = None, ipv6: Any = None,
                    directory: Iterable[str] = (), rendezvous: Iterable = (),
                    relays: Iterable = (), admission: Iterable = (),
                    cert_lifetime: int = DEFAULT_CERT_LIFETIME, seq: int = 1,
                    random_bytes: Callable[[int], bytes] = crypto.random_bytes) -> Definition:
    """A new, signed definition (``phantom network init``).

    ``ipv4``/``ipv6`` default to a random /16 of 100.64.0.0/10 and a random
    ULA /48; ``domain`` to ``NAME.internal`` (the TLD ICANN reserved for
    private use in 2024).  ``rendezvous``/``relays`` are (X25519 key,
    "host:port") pairs; ``admission`` (Ed25519 key, expires) pairs.  Raises
    FormatError naming the field for any bad value."""
    body = {"v": VERSION, "name": name,
            "domain": domain if domain is not None else "%s.internal" % name,
            "authority": b64(authority.public),
            "ipv4": str(ipv4) if ipv4 is not None else str(random_ipv4_prefix(random_bytes)),
            "ipv6": str(ipv6) if ipv6 is not None else str(random_ula_prefix(random_bytes)),
            "directory": list(directory), "rendezvous": _server_docs(rendezvous),
            "relays": _server_docs(relays), "admission": _admission_docs(admission),
            "cert_lifetime": cert_lifetime, "seq": seq, "issued": int(now)}
    return _sign(authority, body)


REVISABLE = frozenset(("domain", "directory", "rendezvous", "relays", "cert_lifetime"))


def revise(current: Definition, authority: SigningKey, now: float, *,
           add_admission: Iterable = (), remove_admission: Iterable[bytes] = (),
           drop_expired: bool = True, **changes: Any) -> Definition:
    """The next definition (seq + 1), signed by the same authority.

    Admission keys are rotated with ``add_admission`` ((key, expires) pairs)
    and ``remove_admission`` (keys): everything a removed key signed stops
    counting at once (certificates, removals, policies), so the directory
    re-signs what must stay.  ``changes`` may set ``domain``, ``directory``,
    ``rendezvous``, ``relays`` or ``cert_lifetime``; the name and the prefixes
    never change (members' addresses would), nor the authority."""
    if authority.public != current.authority:
        raise ValueError("this is not the authority key of network %s" % current.name)
    bad = set(changes) - REVISABLE
    if bad:
        raise ValueError("cannot change %s of a network (make a new network)"
                         % ", ".join(sorted(bad)))
    body = {k: v for k, v in current.doc.items() if k != "sig"}
    for k in ("rendezvous", "relays"):
        if k in changes:
            changes[k] = _server_docs(changes[k])
    if "directory" in changes:
        changes["directory"] = list(changes["directory"])
    body.update(changes)
    removed = {bytes(k) for k in remove_admission}
    keys = [a for a in current.admission if a.key not in removed and
            not (drop_expired and a.expires <= now)]
    added = _admission_docs(add_admission)
    body["admission"] = [a.to_doc() for a in keys] + added
    body["seq"] = current.seq + 1
    body["issued"] = max(int(now), current.issued)
    return _sign(authority, body)


def is_newer(current: Definition, candidate: Definition) -> bool:
    """True when ``candidate`` replaces ``current``: the same authority and a
    higher seq.  Another authority is never a newer version (Refused)."""
    if candidate.authority != current.authority:
        raise Refused(Reason.WRONG_AUTHORITY, WHAT, current.name,
                      "it is network %s" % candidate.fingerprint)
    return candidate.seq > current.seq
