"""The public-key directory: signed records, a small JSON service, and its client.

``phantom directory serve`` runs an aiohttp service (on uvloop) over a SQLite
file.  Nodes publish *records* about themselves; anyone can look them up by
public key or by name.  See README.md, "Directory", for the trust model.

How a record is made and checked:

  1. the node holds its X25519 private key ``k`` (the Noise static key);
  2. it derives the Ed25519 scalar ``a = clamp(k) mod L`` -- the same scalar,
     used on the twisted Edwards form of Curve25519 -- and the Ed25519 public
     key ``A = a*B`` (libsodium: scalar_reduce, scalarmult_ed25519_base_noclamp);
  3. it signs ``RECORD_DOMAIN || canonical_json(record minus sig and
     endorsements)`` with an ordinary Ed25519 signature under ``A``, computed
     with libsodium's scalar operations (the XEdDSA idea, with ``A`` sent
     explicitly instead of a sign-normalised key) and a hedged nonce
     ``r = BLAKE2b(key=K_nonce, Z || M) mod L`` with 32 random bytes ``Z``;
  4. a verifier checks, with libsodium only:
     a. the binding: ``crypto_sign_ed25519_pk_to_curve25519(A) == public_key``
        (the birational map sends ``a*B`` to the X25519 public key of ``k``;
        libsodium refuses small-order and off-subgroup ``A``);
     b. the signature: ``crypto_sign_open`` under ``A``.
     Only ``A`` and ``-A`` map to a given X25519 key, and signing under
     either needs ``a`` (or ``-a``), i.e. the node's private key.  So a
     directory cannot attach its own signing key to someone else's public key.

Endorsements are Ed25519 signatures by a *trusted signer* (identified by
its Ed25519 key, which a phantom key file yields with
``phantom directory signer-key``) over ``ENDORSE_DOMAIN ||
canonical_json({public_key, name, expires})``.  They are not covered by the
record's signature (a third party adds them), so each is verified on its
own; a bad one is refused by the server and ignored by clients.

Canonical JSON: ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``.  Documents are parsed strictly (no duplicate keys, no
floats, no NaN), and every string field must already be in canonical form
(endpoints as ``format_endpoint`` writes them, prefixes as ``ip_network``
prints them), so the bytes that were signed are the bytes re-derived.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import ipaddress
import json
import os
import signal
import sqlite3
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import nacl.bindings as _nb
from aiohttp import web
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from phantom import __version__, crypto, logsetup
from phantom.control.api import JsonErrorRunner, json_errors
from phantom.control.config import PEER_NAME, PEER_NAME_RULE, format_endpoint, parse_endpoint, \
    parse_network
from phantom.control.errors import ApiError, BadRequest, ConfigError, Conflict, NotFound, \
    PayloadTooLarge
from phantom.control.keys import KeyFormatError, decode_public_key

log = logsetup.get_logger("directory")

# --- format constants ---------------------------------------------------------------------------
RECORD_DOMAIN = b"phantom-directory-record-v1\n"
ENDORSE_DOMAIN = b"phantom-directory-endorsement-v1\n"
NONCE_LABEL = b"phantom-directory-nonce-key-v1"
SIG_SIZE = 64
KEY_SIZE = 32
MAX_SEQ = 2 ** 63 - 1                 # fits SQLite's INTEGER; a revocation uses it
MAX_TIME = 2 ** 63 - 1
MAX_ENDPOINTS = 16
MAX_ALLOWED_IPS = 64
MAX_ENDORSEMENTS = 16
RECORD_FIELDS = frozenset(("name", "public_key", "signing_key", "endpoints", "allowed_ips",
                           "seq", "expires", "revoked", "endorsements", "sig"))
UNSIGNED_FIELDS = frozenset(("sig", "endorsements"))
ENDORSEMENT_FIELDS = frozenset(("signer", "expires", "sig"))

# --- service tunables ---------------------------------------------------------------------------
DEFAULT_PORT = 4568
DEFAULT_DB = "phantom-directory.sqlite"
MAX_BODY = 16 * 1024                  # one record with 16 endpoints, 64 prefixes, 16 endorsements
BODY_TIMEOUT = 10.0
DEFAULT_MAX_TTL = 30 * 86400          # the server refuses records that live longer
CLOCK_SKEW = 300                      # seconds of clock difference tolerated on publish
LIST_LIMIT = 500
PURGE_INTERVAL = 60.0

# --- client tunables ----------------------------------------------------------------------------
DEFAULT_TTL = 3600                    # a published record lives this long; republish at half
REVOCATION_TTL = 365 * 86400
CLIENT_TIMEOUT = 5.0
CACHE_REFRESH = 30.0                  # a cached record younger than this is served without asking
CACHE_TTL = 3600.0                    # the oldest cached record served while the directory is down
NEGATIVE_TTL = 5.0                    # "no such record" is remembered this long
CACHE_ENTRIES = 4096
MAX_RESPONSE = 1024 * 1024


# --- errors -------------------------------------------------------------------------------------
class RecordError(ValueError):
    """A record or endorsement is malformed, badly signed or expired."""


class DirectoryError(Exception):
    """The directory could not do what was asked."""


class DirectoryUnavailable(DirectoryError):
    """Unreachable, timed out, 5xx, or an answer that is not JSON (and no usable cache)."""


class DirectoryRejected(DirectoryError):
    """The directory answered 4xx to a publish, revoke or endorse."""

    def __init__(self, status: int, message: str):
        super().__init__("directory refused (HTTP %d): %s" % (status, message))
        self.status = status
        self.message = message


class Gone(ApiError):
    status = 410


class Forbidden(ApiError):
    status = 403


class RequestTimeout(ApiError):
    status = 408


# --- signatures: Ed25519 with the node's X25519 scalar --------------------------------------------
class NodeSigner:
    """Signs with a node's X25519 private key, as an Ed25519 key (see module doc).

    ``public_key`` is the X25519 public key, ``signing_key`` the Ed25519 one.
    Call :meth:`wipe` when done; the scalar and the nonce key are bytearrays.
    """

    def __init__(self, private_key):
        if len(private_key) != KEY_SIZE:
            raise KeyFormatError("private key must be %d bytes" % KEY_SIZE)
        clamped = bytearray(private_key)
        clamped[0] &= 248
        clamped[31] &= 127
        clamped[31] |= 64
        try:
            self._scalar = bytearray(_nb.crypto_core_ed25519_scalar_reduce(bytes(clamped) +
                                                                           bytes(32)))
        finally:
            crypto.memzero(clamped)
        self._nonce_key = bytearray(crypto.blake2b(NONCE_LABEL, digest_size=32,
                                                   key=bytes(private_key)))
        self.public_key = crypto.x25519_public(bytes(private_key))
        self.signing_key = _nb.crypto_scalarmult_ed25519_base_noclamp(bytes(self._scalar))
        if not verify_binding(self.public_key, self.signing_key):   # cannot happen; be sure
            self.wipe()
            raise crypto.CryptoError("Ed25519 form of the key does not map back to it")

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature ``R || S`` over ``message``."""
        if not any(self._scalar):
            raise crypto.CryptoError("this signer was wiped")
        z = crypto.random_bytes(32)
        r = _nb.crypto_core_ed25519_scalar_reduce(
            crypto.blake2b(z + bytes(message), digest_size=64, key=bytes(self._nonce_key)))
        big_r = _nb.crypto_scalarmult_ed25519_base_noclamp(r)
        h = _nb.crypto_core_ed25519_scalar_reduce(
            _nb.crypto_hash_sha512(big_r + self.signing_key + bytes(message)))
        s = _nb.crypto_core_ed25519_scalar_add(r, _nb.crypto_core_ed25519_scalar_mul(
            h, bytes(self._scalar)))
        return big_r + s

    def wipe(self) -> None:
        crypto.memzero(self._scalar)
        crypto.memzero(self._nonce_key)


def signing_key_of(private_key) -> bytes:
    """The Ed25519 public key of a phantom private key (what ``--trusted-signer`` takes)."""
    signer = NodeSigner(private_key)
    try:
        return signer.signing_key
    finally:
        signer.wipe()


def verify_binding(public_key: bytes, signing_key: bytes) -> bool:
    """True when Ed25519 key ``signing_key`` is the Edwards form of X25519 ``public_key``."""
    try:
        mapped = _nb.crypto_sign_ed25519_pk_to_curve25519(bytes(signing_key))
    except Exception:            # small order, not on the curve, not in the prime subgroup
        return False
    return crypto.equal(mapped, public_key)


def verify_signature(signing_key: bytes, message: bytes, sig: bytes) -> bool:
    if len(signing_key) != KEY_SIZE or len(sig) != SIG_SIZE:
        return False
    try:
        VerifyKey(bytes(signing_key)).verify(bytes(message), bytes(sig))
    except (BadSignatureError, ValueError, TypeError):
        return False
    except Exception:            # libsodium refusing a key: a failed verification
        return False
    return True


# --- canonical JSON -----------------------------------------------------------------------------
def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def strict_loads(raw: bytes | str) -> Any:
    """Parse JSON, refusing duplicate keys, floats, NaN/Infinity and absurd nesting."""
    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise ValueError("duplicate key %r" % k)
            out[k] = v
        return out

    def no_float(text):
        raise ValueError("numbers must be integers, not %s" % text[:20])

    def no_const(text):
        raise ValueError("%s is not allowed" % text)

    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8")
    try:
        return json.loads(raw, object_pairs_hook=pairs, parse_float=no_float,
                          parse_constant=no_const)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def b64url(data: bytes) -> str:
    """The URL-path form of a key: base64 with '-' and '_' (and '=' kept)."""
    return base64.urlsafe_b64encode(bytes(data)).decode("ascii")


def key_from_text(text: str) -> bytes:
    """A public key from standard or URL-safe base64 (raises KeyFormatError)."""
    if isinstance(text, str):
        text = text.replace("-", "+").replace("_", "/")
    return decode_public_key(text)


def _b64_field(value: Any, what: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * size:
        raise RecordError("%s must be a base64 string" % what)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("%s is not valid base64" % what) from None
    if len(raw) != size or b64(raw) != value:
        raise RecordError("%s must be %d bytes in canonical base64" % (what, size))
    return raw


def _int_field(value: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise RecordError("%s must be an integer in %d..%d" % (what, lo, hi))
    return value


def _name_field(value: Any) -> str:
    if not isinstance(value, str) or not PEER_NAME.match(value):
        raise RecordError("name %r is not valid (%s)" % (value, PEER_NAME_RULE))
    return value


# --- records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """A record whose signature, key binding and endorsements were verified."""

    name: str
    public_key: bytes                                   # X25519
    signing_key: bytes                                  # Ed25519, bound to public_key
    endpoints: tuple                                    # ((host, port), ...)
    allowed_ips: tuple                                  # (ip_network, ...)
    seq: int
    expires: int                                        # unix time
    revoked: bool
    endorsed_by: frozenset = frozenset()                # Ed25519 keys of trusted endorsers
    doc: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def key_text(self) -> str:
        return b64(self.public_key)

    @property
    def endorsed(self) -> bool:
        return bool(self.endorsed_by)

    def summary(self) -> dict:
        """JSON-friendly view for CLIs and APIs (public data only)."""
        return {"name": self.name, "public_key": self.key_text,
                "signing_key": b64(self.signing_key),
                "endpoints": [format_endpoint(e) for e in self.endpoints],
                "allowed_ips": [str(n) for n in self.allowed_ips], "seq": self.seq,
                "expires": self.expires, "revoked": self.revoked,
                "endorsed_by": sorted(b64(s) for s in self.endorsed_by)}


def record_signed_bytes(doc: dict) -> bytes:
    return RECORD_DOMAIN + canonical({k: v for k, v in doc.items() if k not in UNSIGNED_FIELDS})


def endorsement_signed_bytes(public_key: bytes, name: str, expires: int) -> bytes:
    return ENDORSE_DOMAIN + canonical({"public_key": b64(public_key), "name": name,
                                       "expires": expires})


def make_record(signer: NodeSigner, name: str, endpoints: Iterable, allowed_ips: Iterable,
                seq: int, expires: int, revoked: bool = False) -> dict:
    """A signed record document.  Endpoints may be "ip:port" strings or (host, port)."""
    eps = []
    for i, e in enumerate(endpoints):
        if isinstance(e, (tuple, list)):
            e = format_endpoint((str(e[0]), int(e[1])))
        eps.append(_canonical_endpoint(e, i))
    nets = [_canonical_network(str(n) if not isinstance(n, str) else n, i)
            for i, n in enumerate(allowed_ips)]
    doc = {"name": _name_field(name), "public_key": b64(signer.public_key),
           "signing_key": b64(signer.signing_key), "endpoints": eps, "allowed_ips": nets,
           "seq": _int_field(seq, "seq", 0, MAX_SEQ),
           "expires": _int_field(expires, "expires", 1, MAX_TIME), "revoked": bool(revoked),
           "endorsements": []}
    doc["sig"] = b64(signer.sign(record_signed_bytes(doc)))
    return doc


def make_endorsement(signer: NodeSigner, public_key: bytes, name: str, expires: int) -> dict:
    """A trusted signer's endorsement of (public_key, name) until ``expires``."""
    sig = signer.sign(endorsement_signed_bytes(public_key, _name_field(name),
                                               _int_field(expires, "expires", 1, MAX_TIME)))
    return {"signer": b64(signer.signing_key), "expires": expires, "sig": b64(sig)}


def _canonical_endpoint(value: Any, i: int) -> str:
    try:
        parsed = parse_endpoint(value, "endpoints[%d]" % i)
    except ConfigError as exc:
        raise RecordError(str(exc)) from None
    text = format_endpoint(parsed)
    if text != value:
        raise RecordError("endpoints[%d]: write %r as %r" % (i, value, text))
    return text


def _canonical_network(value: Any, i: int) -> str:
    try:
        net = parse_network(value, "allowed_ips[%d]" % i)
    except ConfigError as exc:
        raise RecordError(str(exc)) from None
    if str(net) != value:
        raise RecordError("allowed_ips[%d]: write %r as %r" % (i, value, str(net)))
    return value


def verify_endorsement(end: Any, public_key: bytes, name: str, now: float) -> bytes:
    """Check one endorsement of (public_key, name); return the signer's Ed25519 key."""
    if not isinstance(end, dict) or set(end) != ENDORSEMENT_FIELDS:
        raise RecordError("an endorsement is {\"signer\", \"expires\", \"sig\"}")
    signer = _b64_field(end["signer"], "endorsement signer", KEY_SIZE)
    expires = _int_field(end["expires"], "endorsement expires", 1, MAX_TIME)
    sig = _b64_field(end["sig"], "endorsement sig", SIG_SIZE)
    if expires <= now:
        raise RecordError("endorsement by %s expired" % b64(signer))
    if not verify_signature(signer, endorsement_signed_bytes(public_key, name, expires), sig):
        raise RecordError("endorsement by %s has a bad signature" % b64(signer))
    return signer


def parse_record(doc: Any, now: float, *, trusted_signers: Optional[Iterable[bytes]] = (),
                 strict_endorsements: bool = False) -> Record:
    """Validate a record document completely; raise RecordError saying why not.

    Checks shape and canonical forms, the key binding, the signature, and
    expiry (a revocation never expires).  ``endorsed_by`` holds the valid,
    unexpired endorsements whose signer is in ``trusted_signers`` (every
    valid signer when ``trusted_signers`` is None).  A bad endorsement is
    ignored, or raises with ``strict_endorsements`` (the server's mode).
    """
    if not isinstance(doc, dict):
        raise RecordError("a record is a JSON object")
    missing = (RECORD_FIELDS - {"endorsements"}) - set(doc)
    if missing:
        raise RecordError("record lacks field(s): %s" % ", ".join(sorted(missing)))
    unknown = set(doc) - RECORD_FIELDS
    if unknown:
        raise RecordError("unknown record field(s): %s" % ", ".join(sorted(map(str, unknown))))
    name = _name_field(doc["name"])
    public_key = _b64_field(doc["public_key"], "public_key", KEY_SIZE)
    if not any(public_key):
        raise RecordError("public_key is all zeros")
    if crypto.is_small_order(public_key):
        raise RecordError("public_key is a small-order Curve25519 point")
    signing_key = _b64_field(doc["signing_key"], "signing_key", KEY_SIZE)
    eps, nets = doc["endpoints"], doc["allowed_ips"]
    if not isinstance(eps, list) or len(eps) > MAX_ENDPOINTS:
        raise RecordError("endpoints must be a list of at most %d \"ip:port\"" % MAX_ENDPOINTS)
    if not isinstance(nets, list) or len(nets) > MAX_ALLOWED_IPS:
        raise RecordError("allowed_ips must be a list of at most %d CIDR strings" % MAX_ALLOWED_IPS)
    endpoints = tuple(parse_endpoint(_canonical_endpoint(e, i)) for i, e in enumerate(eps))
    allowed = tuple(ipaddress.ip_network(_canonical_network(n, i)) for i, n in enumerate(nets))
    seq = _int_field(doc["seq"], "seq", 0, MAX_SEQ)
    expires = _int_field(doc["expires"], "expires", 1, MAX_TIME)
    revoked = doc["revoked"]
    if not isinstance(revoked, bool):
        raise RecordError("revoked must be true or false")
    sig = _b64_field(doc["sig"], "sig", SIG_SIZE)
    endorsements = doc.get("endorsements", [])
    if not isinstance(endorsements, list) or len(endorsements) > MAX_ENDORSEMENTS:
        raise RecordError("endorsements must be a list of at most %d" % MAX_ENDORSEMENTS)

    if not verify_binding(public_key, signing_key):
        raise RecordError("signing_key is not the Ed25519 form of public_key (forged record)")
    if not verify_signature(signing_key, record_signed_bytes(doc), sig):
        raise RecordError("bad signature: the record was not signed by the key it names")
    if not revoked and expires <= now:
        raise RecordError("record expired %d s ago" % int(now - expires))

    trusted = None if trusted_signers is None else {bytes(s) for s in trusted_signers}
    endorsed = set()
    for end in endorsements:
        try:
            signer = verify_endorsement(end, public_key, name, now)
        except RecordError as exc:
            if strict_endorsements:
                raise
            log.debug("ignoring an endorsement on the record of %s: %s", name, exc)
            continue
        if trusted is None or signer in trusted:
            endorsed.add(signer)
    return Record(name, public_key, signing_key, endpoints, allowed, seq, expires, revoked,
                  frozenset(endorsed), doc)


# --- the store (SQLite) -----------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    public_key     TEXT PRIMARY KEY,      -- standard base64
    name           TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    expires        INTEGER NOT NULL,
    revoked        INTEGER NOT NULL,
    endorsed_until INTEGER NOT NULL DEFAULT 0,   -- by a signer this directory trusts
    doc            TEXT NOT NULL,          -- the record JSON as served
    updated        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_name ON records (name);
"""


@dataclass
class StoredRecord:
    public_key: str
    name: str
    seq: int
    expires: int
    revoked: bool
    endorsed_until: int
    doc: dict


class DirectoryStore:
    """Records in one SQLite file; every method is a short synchronous transaction.

    The server calls it from the event loop without awaiting in between a
    check and the write that depends on it, so requests cannot interleave.
    """

    def __init__(self, path=":memory:"):
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=2000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _row(row) -> Optional[StoredRecord]:
        if row is None:
            return None
        return StoredRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], json.loads(row[6]))

    _COLUMNS = "public_key, name, seq, expires, revoked, endorsed_until, doc"

    def get(self, public_key: str) -> Optional[StoredRecord]:
        return self._row(self._db.execute("SELECT %s FROM records WHERE public_key = ?"
                                          % self._COLUMNS, (public_key,)).fetchone())

    def by_name(self, name: str, now: int, exclude: str = "") -> Optional[StoredRecord]:
        """The live record holding ``name``: endorsed claims first, then the newest."""
        return self._row(self._db.execute(
            "SELECT %s FROM records WHERE name = ? AND revoked = 0 AND expires > ? "
            "AND public_key != ? ORDER BY (endorsed_until > ?) DESC, seq DESC LIMIT 1"
            % self._COLUMNS, (name, now, exclude, now)).fetchone())

    def list(self, now: int, after: str = "", limit: int = LIST_LIMIT) -> list[StoredRecord]:
        rows = self._db.execute(
            "SELECT %s FROM records WHERE public_key > ? AND (revoked = 1 OR expires > ?) "
            "ORDER BY public_key LIMIT ?" % self._COLUMNS, (after, now, limit)).fetchall()
        return [self._row(r) for r in rows]

    def put(self, rec: Record, doc: dict, endorsed_until: int, now: float) -> None:
        self._db.execute(
            "INSERT INTO records (public_key, name, seq, expires, revoked, endorsed_until, doc, "
            "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (public_key) DO UPDATE SET "
            "name = excluded.name, seq = excluded.seq, expires = excluded.expires, "
            "revoked = excluded.revoked, endorsed_until = excluded.endorsed_until, "
            "doc = excluded.doc, updated = excluded.updated",
            (rec.key_text, rec.name, rec.seq, rec.expires, int(rec.revoked), endorsed_until,
             canonical(doc).decode("ascii"), now))

    def purge(self, now: int) -> int:
        """Delete expired records (revocations are kept: they must never be undone)."""
        cur = self._db.execute("DELETE FROM records WHERE revoked = 0 AND expires <= ?", (now,))
        return cur.rowcount

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]


# --- the server -------------------------------------------------------------------------------------
STORE_KEY = web.AppKey("store", DirectoryStore)
CLOCK_KEY = web.AppKey("clock", object)
TRUST_KEY = web.AppKey("trusted_signers", frozenset)
MAX_TTL_KEY = web.AppKey("max_ttl", int)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


# The daemon API's JSON error handling, with this service's body limit.
_errors = json_errors(_error, MAX_BODY, "directory")


async def _body(request: web.Request) -> Any:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise PayloadTooLarge("request body too large (%d bytes, limit %d)" % (length, MAX_BODY))
    try:
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT)   # 413 past client_max_size
    except asyncio.TimeoutError:
        raise RequestTimeout("request body not received within %g s" % BODY_TIMEOUT) from None
    if not raw.strip():
        raise BadRequest("this request needs a JSON body")
    try:
        return strict_loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("body is not valid JSON: %s" % exc) from None


def _path_key(request: web.Request) -> str:
    try:
        return b64(key_from_text(request.match_info["public_key"]))
    except KeyFormatError as exc:
        raise BadRequest("public key in the path: %s (use URL-safe base64)" % exc) from None


def _now(request: web.Request) -> float:
    return request.app[CLOCK_KEY]()


def _endorsed_until(rec: Record, doc: dict, trusted: frozenset, now: float) -> int:
    if not trusted:
        return 0
    best = 0
    for end in doc.get("endorsements", []):
        try:
            signer = verify_endorsement(end, rec.public_key, rec.name, now)
        except RecordError:
            continue
        if signer in trusted:
            best = max(best, end["expires"])
    return best


def _merge_endorsements(rec: Record, new: list, old: list, trusted: frozenset,
                        now: float) -> list:
    """Endorsements still valid for this record's key and name, one per signer."""
    by_signer: dict[str, dict] = {}
    for end in list(old) + list(new):             # new ones replace old ones by signer
        try:
            signer = verify_endorsement(end, rec.public_key, rec.name, now)
        except RecordError:
            continue
        if trusted and signer not in trusted:
            continue
        by_signer[end["signer"]] = end
    kept = sorted(by_signer.values(), key=lambda e: -e["expires"])[:MAX_ENDORSEMENTS]
    return sorted(kept, key=lambda e: e["signer"])


async def get_status(request: web.Request) -> web.Response:
    return _json({"service": "phantom-directory", "version": __version__,
                  "records": request.app[STORE_KEY].count(), "time": int(_now(request))})


async def get_record(request: web.Request) -> web.Response:
    key = _path_key(request)
    row = request.app[STORE_KEY].get(key)
    if row is None or (not row.revoked and row.expires <= _now(request)):
        raise NotFound("no record for this key")
    return _json(row.doc)


async def get_name(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not PEER_NAME.match(name):
        raise BadRequest("not a valid name (%s)" % PEER_NAME_RULE)
    row = request.app[STORE_KEY].by_name(name, int(_now(request)))
    if row is None:
        raise NotFound("no record with this name")
    return _json(row.doc)


async def list_records(request: web.Request) -> web.Response:
    after = request.query.get("after", "")
    if after:
        try:
            after = b64(key_from_text(after))
        except KeyFormatError as exc:
            raise BadRequest("after: %s" % exc) from None
    text = request.query.get("limit", str(LIST_LIMIT))
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= LIST_LIMIT:
        raise BadRequest("limit must be an integer in 1..%d" % LIST_LIMIT)
    rows = request.app[STORE_KEY].list(int(_now(request)), after, int(text))
    nxt = rows[-1].public_key if len(rows) == int(text) else None
    return _json({"records": [r.doc for r in rows], "next": nxt})


async def put_record(request: web.Request) -> web.Response:
    key = _path_key(request)
    doc = await _body(request)
    app, now = request.app, _now(request)
    trusted = app[TRUST_KEY]
    try:
        rec = parse_record(doc, now, trusted_signers=trusted or None, strict_endorsements=True)
    except RecordError as exc:
        status = 403 if "signature" in str(exc) or "forged" in str(exc) else 400
        raise (Forbidden if status == 403 else BadRequest)(str(exc)) from None
    if rec.key_text != key:
        raise BadRequest("the record's public_key %s differs from the key in the path"
                         % rec.key_text)
    if not rec.revoked and rec.expires > now + app[MAX_TTL_KEY] + CLOCK_SKEW:
        raise BadRequest("record lives too long: expires in %d s, this directory keeps at most "
                         "%d s" % (rec.expires - now, app[MAX_TTL_KEY]))
    store = app[STORE_KEY]
    # From here to store.put there is no await: no other request can interleave.
    old = store.get(key)
    if old is not None and old.doc.get("sig") == doc.get("sig"):
        return _json(old.doc)                      # the same record again: idempotent
    if old is not None and old.revoked:
        raise Gone("this key was revoked; a revocation is final")
    if old is not None and rec.seq <= old.seq:
        raise Conflict("stale seq %d: the directory holds seq %d for this key (newer wins)"
                       % (rec.seq, old.seq))
    merged = _merge_endorsements(rec, doc.get("endorsements", []),
                                 old.doc.get("endorsements", []) if old else [], trusted, now)
    stored = dict(doc, endorsements=merged)
    endorsed_until = _endorsed_until(rec, stored, trusted, now)
    if not rec.revoked:
        holder = store.by_name(rec.name, int(now), exclude=key)
        if holder is not None and not (endorsed_until > now and holder.endorsed_until <= now):
            raise Conflict("name %r is held by another key (%s) until %d"
                           % (rec.name, holder.public_key, holder.expires))
    store.put(rec, stored, endorsed_until, now)
    log.info("%s %s seq=%d name=%s endpoints=%s", "revoked" if rec.revoked else
             ("updated" if old else "published"), key, rec.seq, rec.name,
             ",".join(stored["endpoints"]) or "-")
    return _json(stored, status=200 if old else 201)


async def post_endorsement(request: web.Request) -> web.Response:
    key = _path_key(request)
    end = await _body(request)
    app, now, store = request.app, _now(request), request.app[STORE_KEY]
    old = store.get(key)
    if old is None or (not old.revoked and old.expires <= now):
        raise NotFound("no record for this key to endorse")
    if old.revoked:
        raise Gone("this key was revoked")
    try:
        rec = parse_record(old.doc, now, trusted_signers=None)
        signer = verify_endorsement(end, rec.public_key, rec.name, now)
    except RecordError as exc:
        raise BadRequest(str(exc)) from None
    trusted = app[TRUST_KEY]
    if trusted and signer not in trusted:
        raise Forbidden("signer %s is not trusted by this directory" % b64(signer))
    merged = _merge_endorsements(rec, [end], old.doc.get("endorsements", []), trusted, now)
    stored = dict(old.doc, endorsements=merged)
    store.put(rec, stored, _endorsed_until(rec, stored, trusted, now), now)
    log.info("endorsement of %s (name=%s) by %s until %d", key, rec.name, b64(signer),
             end["expires"])
    return _json(stored)


def create_app(store: DirectoryStore, *, clock: Callable[[], float] = time.time,
               trusted_signers: Iterable[bytes] = (),
               max_ttl: int = DEFAULT_MAX_TTL) -> web.Application:
    """The directory application (routes in README.md, "Directory")."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[STORE_KEY] = store
    app[CLOCK_KEY] = clock
    app[TRUST_KEY] = frozenset(bytes(s) for s in trusted_signers)
    app[MAX_TTL_KEY] = int(max_ttl)
    r = app.router
    r.add_get("/status", get_status)
    r.add_get("/records", list_records)
    r.add_get("/records/{public_key}", get_record)
    r.add_put("/records/{public_key}", put_record)
    r.add_post("/records/{public_key}/endorsements", post_endorsement)
    r.add_get("/names/{name}", get_name)
    return app


async def start_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app``; ``runner.addresses`` tells the bound port (use port 0 in tests)."""
    runner = JsonErrorRunner(app, respond=_error, who="directory", access_log=None,
                             handle_signals=False, keepalive_timeout=15.0, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True, backlog=128).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _purge_loop(store: DirectoryStore, clock) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL)
        n = store.purge(int(clock()))
        if n:
            log.info("purged %d expired record(s)", n)


async def serve_forever(host: str, port: int, db, trusted_signers=(),
                        max_ttl: int = DEFAULT_MAX_TTL, drop_to=None) -> None:
    """Run the directory until SIGINT/SIGTERM.

    ``drop_to`` (a passwd entry from :func:`phantom.privileges.resolve_user`;
    the caller has already called ``lock_down``): switch to that user once the
    database is open and the port bound.  The server then reads and writes
    the db only through the descriptors SQLite opened as root."""
    store = DirectoryStore(db)
    runner = await start_server(create_app(store, trusted_signers=trusted_signers,
                                           max_ttl=max_ttl), host, port)
    if drop_to is not None:
        from phantom.privileges import switch_user
        try:
            _preload_server()
            switch_user(drop_to)         # every thread; verified task by task
        except BaseException:
            await runner.cleanup()
            store.close()
            raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    purger = asyncio.ensure_future(_purge_loop(store, time.time))
    log.info("directory listening on http://%s:%d (db %s, %d record(s), %d trusted signer(s))",
             host if ":" not in host else "[%s]" % host, port, db, store.count(),
             len(tuple(trusted_signers)))
    try:
        await stop.wait()
    finally:
        purger.cancel()
        await runner.cleanup()
        store.close()
        log.info("directory stopped")


def _preload_server() -> None:
    """Import, while still root, what serving may import lazily (the
    unprivileged user may not be able to read the Python installation)."""
    import encodings.idna  # noqa: F401
    import concurrent.futures.thread  # noqa: F401
    import aiohttp.web_urldispatcher  # noqa: F401


# --- the client -------------------------------------------------------------------------------------
@dataclass
class _Entry:
    record: Record
    fetched: float


class DirectoryClient:
    """Publish our record and resolve peers, verifying everything the directory says.

    ``private_key`` (a bytearray; None for a read-only client) signs our
    records; ``trusted_signers`` are Ed25519 keys whose endorsements count
    (``Record.endorsed_by``).  Lookups are cached: a record fetched less than
    ``refresh`` seconds ago is served without asking; when the directory is
    down, one fetched less than ``cache_ttl`` ago (and not expired) is served
    with a warning; without one, :class:`DirectoryUnavailable` is raised.

    Names are pinned on first use (TOFU): once ``name`` resolved to a key,
    another key claiming it is refused unless a trusted signer endorsed it
    or the pinned key was revoked.  :meth:`pin` seeds pins from the config.
    """

    def __init__(self, url: str, private_key=None, clock: Callable[[], float] = time.time, *,
                 trusted_signers: Iterable[bytes] = (), timeout: float = CLIENT_TIMEOUT,
                 refresh: float = CACHE_REFRESH, cache_ttl: float = CACHE_TTL,
                 negative_ttl: float = NEGATIVE_TTL):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError("directory URL must be http:// or https://, not %r" % url)
        self.url = url.rstrip("/")
        self.clock = clock
        self.timeout = timeout
        self.refresh = refresh
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.trusted_signers = frozenset(bytes(s) for s in trusted_signers)
        self._signer = NodeSigner(private_key) if private_key is not None else None
        self.public_key: Optional[bytes] = self._signer.public_key if self._signer else None
        self._seq = 0
        self._name: Optional[str] = None
        self._cache: dict[bytes, _Entry] = {}
        self._missing: dict[Any, float] = {}
        self._pins: dict[str, bytes] = {}
        self._highest: dict[bytes, int] = {}
        self._revoked: set[bytes] = set()
        self._session = None
        self.stats = {"lookups": 0, "cache_hits": 0, "stale_served": 0, "not_found": 0,
                      "rejected": 0, "pin_refused": 0}

    # lifecycle
    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wipe(self) -> None:
        """Forget the signing key (zeroed)."""
        if self._signer is not None:
            self._signer.wipe()

    async def __aenter__(self) -> "DirectoryClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # state the daemon may read without I/O
    def pin(self, name: str, public_key: bytes) -> None:
        """Bind ``name`` to ``public_key`` (e.g. a [[peer]] in the config)."""
        self._pins[_name_field(name)] = bytes(public_key)

    def cached(self, public_key: bytes) -> Optional[Record]:
        """The cached record of a key, if any and not expired (no network)."""
        entry = self._cache.get(bytes(public_key))
        if entry is None or entry.record.expires <= self.clock():
            return None
        return entry.record

    def is_revoked(self, public_key: bytes) -> bool:
        return bytes(public_key) in self._revoked

    # HTTP
    def _http(self):
        if self._session is None:
            import aiohttp
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False)
        return self._session

    async def _request(self, method: str, path: str, body: Any = None,
                       limit: int = MAX_BODY * 4) -> tuple[int, Any]:
        import aiohttp
        data = canonical(body) if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(method, self.url + path, data=data,
                                             headers=headers) as resp:
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    buf += chunk
                    if len(buf) > limit:
                        raise DirectoryUnavailable("directory %s sent more than %d bytes"
                                                   % (self.url, limit))
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            reason = exc.__class__.__name__ + (": %s" % exc if str(exc) else "")
            raise DirectoryUnavailable("directory %s unreachable (%s)" % (self.url, reason)) from None
        if status >= 500:
            raise DirectoryUnavailable("directory %s answered HTTP %d" % (self.url, status))
        try:
            payload = strict_loads(bytes(buf)) if buf else None
        except (UnicodeDecodeError, ValueError):
            raise DirectoryUnavailable("directory %s sent a response that is not JSON "
                                       "(HTTP %d)" % (self.url, status)) from None
        return status, payload

    @staticmethod
    def _message(payload: Any) -> str:
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return payload["error"]
        return "no reason given"

    # lookups
    def _verify(self, doc: Any, now: float) -> Record:
        return parse_record(doc, now, trusted_signers=self.trusted_signers)

    def _stale(self, entry: Optional[_Entry], what: str, exc: Exception, now: float) -> Record:
        if entry is not None and now - entry.fetched <= self.cache_ttl and \
                entry.record.expires > now and entry.record.public_key not in self._revoked:
            self.stats["stale_served"] += 1
            log.warning("%s; serving the cached record of %s from %d s ago", exc, what,
                        int(now - entry.fetched))
            return entry.record
        if isinstance(exc, DirectoryUnavailable):
            raise exc
        raise DirectoryUnavailable(str(exc))

    def _accept(self, rec: Record, now: float) -> Optional[Record]:
        """Anti-rollback, revocation and caching of a verified record."""
        key = rec.public_key
        if rec.revoked:
            if key not in self._revoked:
                log.warning("the key of %s (%s) is revoked", rec.name, rec.key_text)
            self._revoked.add(key)
            self._cache.pop(key, None)
            for name, pinned in list(self._pins.items()):
                if pinned == key:
                    del self._pins[name]
            return None
        if key in self._revoked:
            return None
        highest = self._highest.get(key, -1)
        if rec.seq < highest:
            log.warning("directory served seq %d for %s but seq %d was seen; keeping the newer",
                        rec.seq, rec.name, highest)
            entry = self._cache.get(key)
            return entry.record if entry and entry.record.expires > now else None
        self._highest[key] = rec.seq
        if len(self._cache) >= CACHE_ENTRIES and key not in self._cache:
            oldest = min(self._cache, key=lambda k: self._cache[k].fetched)
            del self._cache[oldest]
        self._cache[key] = _Entry(rec, now)
        self._missing.pop(key, None)
        return rec

    def _negative(self, what, now: float) -> bool:
        until = self._missing.get(what)
        if until is not None and until > now:
            return True
        self._missing.pop(what, None)
        return False

    def _remember_missing(self, what, now: float) -> None:
        if len(self._missing) >= CACHE_ENTRIES:
            self._missing.clear()
        self._missing[what] = now + self.negative_ttl

    async def resolve_key(self, public_key: bytes, fresh: bool = False) -> Optional[Record]:
        """The verified, live record of ``public_key``; None if absent, revoked or forged.

        ``fresh`` asks the directory even when the cache is recent (used to
        see new endorsements); the cache still answers when it is down."""
        key = bytes(public_key)
        now = self.clock()
        self.stats["lookups"] += 1
        if key in self._revoked:
            return None
        entry = self._cache.get(key)
        if not fresh and entry is not None and now - entry.fetched < self.refresh and \
                entry.record.expires > now:
            self.stats["cache_hits"] += 1
            return entry.record
        if not fresh and self._negative(key, now):
            return None
        what = b64(key)
        try:
            status, payload = await self._request("GET", "/records/" + b64url(key))
        except DirectoryUnavailable as exc:
            return self._stale(entry, what, exc, now)
        if status == 404:
            self.stats["not_found"] += 1
            self._cache.pop(key, None)
            self._remember_missing(key, now)
            return None
        if status != 200:
            return self._stale(entry, what, DirectoryUnavailable(
                "directory answered HTTP %d: %s" % (status, self._message(payload))), now)
        try:
            rec = self._verify(payload, now)
            if rec.public_key != key:
                raise RecordError("the directory answered with the record of another key (%s)"
                                  % rec.key_text)
        except RecordError as exc:
            self.stats["rejected"] += 1
            log.warning("rejected the record the directory served for %s: %s", what, exc)
            return entry.record if entry is not None and entry.record.expires > now else None
        return self._accept(rec, now)

    async def resolve_name(self, name: str) -> Optional[Record]:
        """The verified record holding ``name``; None if absent, refused or forged."""
        _name_field(name)
        now = self.clock()
        self.stats["lookups"] += 1
        pinned = self._pins.get(name)
        entry = self._cache.get(pinned) if pinned is not None else None
        if entry is not None and entry.record.name == name and \
                now - entry.fetched < self.refresh and entry.record.expires > now:
            self.stats["cache_hits"] += 1
            return entry.record
        if self._negative(("name", name), now):
            return None
        try:
            status, payload = await self._request("GET", "/names/" + urllib.parse.quote(name))
        except DirectoryUnavailable as exc:
            if entry is not None and entry.record.name == name:
                return self._stale(entry, name, exc, now)
            raise
        if status == 404:
            self.stats["not_found"] += 1
            self._remember_missing(("name", name), now)
            return None
        if status != 200:
            exc = DirectoryUnavailable("directory answered HTTP %d: %s"
                                       % (status, self._message(payload)))
            if entry is not None and entry.record.name == name:
                return self._stale(entry, name, exc, now)
            raise exc
        try:
            rec = self._verify(payload, now)
            if rec.name != name:
                raise RecordError("asked for %r, the directory answered with a record named %r"
                                  % (name, rec.name))
        except RecordError as exc:
            self.stats["rejected"] += 1
            log.warning("rejected the record the directory served for name %s: %s", name, exc)
            return entry.record if entry is not None and entry.record.expires > now else None
        if pinned is not None and rec.public_key != pinned and not rec.endorsed and \
                pinned not in self._revoked:
            self.stats["pin_refused"] += 1
            log.warning("name %s now claims key %s but was pinned to %s; refused (needs a "
                        "trusted endorsement or a revocation of the pinned key)", name,
                        rec.key_text, b64(pinned))
            return entry.record if entry is not None and entry.record.expires > now else None
        accepted = self._accept(rec, now)
        if accepted is not None and accepted.public_key == rec.public_key:
            self._pins[name] = rec.public_key
        return accepted

    async def is_endorsed(self, public_key: bytes) -> bool:
        """True when the key's live record carries a trusted signer's endorsement."""
        try:
            rec = await self.resolve_key(public_key)
        except DirectoryUnavailable:
            return False
        return rec is not None and rec.endorsed

    async def list_records(self, limit: int = LIST_LIMIT) -> list[Record]:
        """Every verifiable live record (one page of ``limit``); forged ones are skipped."""
        status, payload = await self._request("GET", "/records?limit=%d" % limit,
                                              limit=MAX_RESPONSE)
        if status != 200 or not isinstance(payload, dict) or \
                not isinstance(payload.get("records"), list):
            raise DirectoryUnavailable("directory answered HTTP %d to a listing" % status)
        now, out = self.clock(), []
        for doc in payload["records"]:
            try:
                out.append(self._verify(doc, now))
            except RecordError as exc:
                self.stats["rejected"] += 1
                log.warning("skipping a listed record: %s", exc)
        return out

    # publishing
    def _need_signer(self) -> NodeSigner:
        if self._signer is None:
            raise DirectoryError("this client has no private key (read-only)")
        return self._signer

    async def _put(self, doc: dict) -> tuple[int, Any]:
        return await self._request("PUT", "/records/" + b64url(self._need_signer().public_key),
                                   doc)

    async def publish(self, name: str, endpoints: Iterable, allowed_ips: Iterable,
                      ttl: int = DEFAULT_TTL) -> dict:
        """Sign and publish our record; returns the record as the directory stored it.

        ``seq`` is the time in milliseconds (monotonic per client); if the
        directory holds a newer one (clock went back), we continue after it once.
        Raises DirectoryRejected (4xx) or DirectoryUnavailable.
        """
        signer = self._need_signer()
        endpoints, allowed_ips = list(endpoints), list(allowed_ips)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            raise ValueError("ttl must be a positive number of seconds")
        for attempt in range(2):
            now = self.clock()
            self._seq = max(int(now * 1000), self._seq + 1)
            try:
                doc = make_record(signer, name, endpoints, allowed_ips, self._seq, int(now) + ttl)
            except RecordError as exc:
                raise ValueError(str(exc)) from None
            status, payload = await self._put(doc)
            if status in (200, 201):
                break
            if status == 409 and attempt == 0 and "stale seq" in self._message(payload):
                current = await self._current_seq()
                if current is not None and current >= self._seq:
                    log.info("the directory holds seq %d for our key; continuing after it", current)
                    self._seq = current
                    continue
            raise DirectoryRejected(status, self._message(payload))
        self._name = name
        try:
            self._accept(self._verify(payload, self.clock()), self.clock())
        except RecordError as exc:
            raise DirectoryUnavailable("the directory answered our publish with an invalid "
                                       "record: %s" % exc) from None
        self._pins.setdefault(name, signer.public_key)
        return payload

    async def _current_seq(self) -> Optional[int]:
        status, payload = await self._request("GET", "/records/" +
                                              b64url(self._need_signer().public_key))
        if status != 200:
            return None
        try:
            return parse_record(payload, self.clock(), trusted_signers=()).seq
        except RecordError:
            return None

    async def revoke(self) -> dict:
        """Publish a final, self-signed revocation of our key."""
        signer = self._need_signer()
        name = self._name
        if name is None:
            status, payload = await self._request("GET", "/records/" + b64url(signer.public_key))
            name = payload.get("name") if status == 200 and isinstance(payload, dict) else None
            if not isinstance(name, str) or not PEER_NAME.match(name):
                name = "revoked"
        now = self.clock()
        doc = make_record(signer, name, [], [], MAX_SEQ, int(now) + REVOCATION_TTL, revoked=True)
        status, payload = await self._put(doc)
        if status not in (200, 201):
            raise DirectoryRejected(status, self._message(payload))
        self._revoked.add(signer.public_key)
        self._cache.pop(signer.public_key, None)
        log.info("revoked our key %s in the directory", b64(signer.public_key))
        return payload

    async def endorse(self, public_key: bytes, name: str, ttl: int) -> dict:
        """As a signer, endorse (public_key, name) for ``ttl`` seconds at the directory."""
        signer = self._need_signer()
        end = make_endorsement(signer, bytes(public_key), name, int(self.clock()) + int(ttl))
        status, payload = await self._request("POST", "/records/%s/endorsements"
                                              % b64url(public_key), end)
        if status != 200:
            raise DirectoryRejected(status, self._message(payload))
        return payload

    async def keep_published(self, name: str, endpoints: Iterable, allowed_ips: Iterable,
                             ttl: int = DEFAULT_TTL, retry: float = 30.0) -> None:
        """Publish now and again every ttl/2 until cancelled; failures are logged and retried."""
        endpoints, allowed_ips = list(endpoints), list(allowed_ips)
        while True:
            try:
                await self.publish(name, endpoints, allowed_ips, ttl)
                delay = ttl / 2
            except DirectoryError as exc:
                log.warning("publishing our record failed: %s; retrying", exc)
                delay = min(retry, max(1.0, ttl / 4))
            await asyncio.sleep(delay)


# --- command line ---------------------------------------------------------------------------------
def _run(coro):
    try:
        import uvloop
    except ImportError:              # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


def _signer_arg(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise argparse.ArgumentTypeError("%r is not base64" % text) from None
    if len(raw) != KEY_SIZE:
        raise argparse.ArgumentTypeError("a signer key is 32 bytes (44 base64 characters)")
    return raw


def _print(args, payload: dict) -> None:
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        from phantom.cli import format_kv
        print(format_kv(payload))


async def _with_client(args, private_key, action):
    client = DirectoryClient(args.directory, private_key, trusted_signers=getattr(
        args, "trusted_signer", None) or (), timeout=args.timeout)
    try:
        return await action(client)
    finally:
        client.wipe()
        await client.close()


def _load_key(path):
    from phantom.control.keys import load_private_key
    return load_private_key(path)


def cmd_serve(args) -> int:
    from phantom.privileges import lock_down, resolve_user
    logsetup.setup_logging(args.log_level)
    pw = resolve_user(args.user)         # None unless root
    if pw is not None:
        lock_down()                      # single-threaded: before the loop and any thread exists
    _run(serve_forever(args.listen, args.port, args.db, args.trusted_signer or (), args.max_ttl,
                       drop_to=pw))
    return 0


def cmd_publish(args) -> int:
    key = _load_key(args.private_key)
    nets = [n.strip() for a in args.allowed_ips or () for n in a.split(",") if n.strip()]
    eps = [e.strip() for a in args.endpoint for e in a.split(",") if e.strip()]
    try:
        doc = _run(_with_client(args, key, lambda c: c.publish(args.name, eps, nets, args.ttl)))
    finally:
        crypto.memzero(key)
    _print(args, doc if args.json else {k: v for k, v in doc.items() if k != "sig"})
    return 0


def cmd_lookup(args) -> int:
    target = args.target

    async def action(c: DirectoryClient):
        if PEER_NAME.match(target):          # a base64 key never matches: it ends with '='
            return await c.resolve_name(target)
        return await c.resolve_key(key_from_text(target))

    rec = _run(_with_client(args, None, action))
    if rec is None:
        raise DirectoryError("no valid record for %s" % target)
    _print(args, rec.summary())
    return 0


def cmd_list(args) -> int:
    recs = _run(_with_client(args, None, lambda c: c.list_records()))
    if args.json:
        print(json.dumps([r.summary() for r in recs], indent=2))
    else:
        from phantom.cli import format_table
        print(format_table([r.summary() for r in recs],
                           ("name", "endpoints", "allowed_ips", "revoked", "public_key")))
    return 0


def cmd_revoke(args) -> int:
    key = _load_key(args.private_key)
    try:
        doc = _run(_with_client(args, key, lambda c: c.revoke()))
    finally:
        crypto.memzero(key)
    _print(args, {"revoked": doc.get("public_key"), "name": doc.get("name")})
    return 0


def cmd_endorse(args) -> int:
    key = _load_key(args.private_key)
    target = key_from_text(args.public_key)
    try:
        doc = _run(_with_client(args, key, lambda c: c.endorse(target, args.name, args.ttl)))
    finally:
        crypto.memzero(key)
    _print(args, {"endorsed": doc.get("public_key"), "name": doc.get("name"),
                  "endorsements": len(doc.get("endorsements", []))})
    return 0


def cmd_signer_key(args) -> int:
    key = _load_key(args.private_key)
    try:
        print(b64(signing_key_of(key)))
    finally:
        crypto.memzero(key)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phantom directory",
                                description="The Phantom public-key directory and its client.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = sub.add_parser("serve", help="run the directory service")
    s.add_argument("--listen", default="127.0.0.1", metavar="ADDR", help="address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default %d)" % DEFAULT_PORT)
    s.add_argument("--db", default=DEFAULT_DB, metavar="PATH.sqlite",
                   help="SQLite file (default ./%s); as root it is opened (and created) before "
                        "the switch to --user, so it may sit in a root-only directory and keeps "
                        "its owner; see --user" % DEFAULT_DB)
    s.add_argument("--user", metavar="NAME",
                   help="when started as root: the unprivileged user to switch to (default "
                        "nobody) once the db is open and the port bound (ports below 1024 work); "
                        "the capability bounding set is emptied and no_new_privs set first, for "
                        "every thread.  The server then uses the db only through the descriptors "
                        "opened as root: the file (and its -wal/-shm files, created with the db's "
                        "owner and mode) stays owned by root, the user needs no access to it, and "
                        "other processes running as that user cannot write to it.  The -wal/-shm files "
                        "may be left at exit; the next start recovers them.  Ignored when not "
                        "root (then the db must be writable by you, with its directory)")
    s.add_argument("--trusted-signer", type=_signer_arg, action="append", metavar="KEY",
                   help="Ed25519 key whose endorsements this directory keeps and ranks first "
                        "(repeatable; default: keep any valid endorsement)")
    s.add_argument("--max-ttl", type=int, default=DEFAULT_MAX_TTL, metavar="SECONDS",
                   help="refuse records living longer (default %d)" % DEFAULT_MAX_TTL)
    s.add_argument("--log-level", default="info", choices=logsetup.LEVELS)
    s.set_defaults(func=cmd_serve)

    def client_parser(name, help_text, key_help=None):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--directory", metavar="URL", default=os.environ.get("PHANTOM_DIRECTORY"),
                       required=os.environ.get("PHANTOM_DIRECTORY") is None,
                       help="the directory (or $PHANTOM_DIRECTORY)")
        if key_help:
            c.add_argument("--private-key", metavar="FILE", required=True, help=key_help)
        c.add_argument("--timeout", type=float, default=CLIENT_TIMEOUT, metavar="SECONDS")
        c.add_argument("--json", action="store_true", help="print JSON")
        return c

    c = client_parser("publish", "sign and publish this node's record", "this node's key file")
    c.add_argument("--name", required=True)
    c.add_argument("--endpoint", action="append", required=True, metavar="IP:PORT",
                   help="where peers reach us (repeatable)")
    c.add_argument("--allowed-ips", action="append", metavar="CIDR[,CIDR]")
    c.add_argument("--ttl", type=int, default=DEFAULT_TTL, metavar="SECONDS")
    c.set_defaults(func=cmd_publish)

    c = client_parser("lookup", "resolve a name or a public key, verifying the record")
    c.add_argument("target", help="a name or a base64 public key")
    c.add_argument("--trusted-signer", type=_signer_arg, action="append", metavar="KEY",
                   help="report endorsements by this Ed25519 key (repeatable)")
    c.set_defaults(func=cmd_lookup)

    c = client_parser("list", "list the verifiable records")
    c.set_defaults(func=cmd_list)

    c = client_parser("revoke", "revoke this node's key (final)", "the key file to revoke")
    c.set_defaults(func=cmd_revoke)

    c = client_parser("endorse", "endorse a key and name as a trusted signer",
                      "the signer's key file")
    c.add_argument("--public-key", required=True, metavar="KEY", help="the key to endorse")
    c.add_argument("--name", required=True, help="the name it must carry")
    c.add_argument("--ttl", type=int, default=30 * 86400, metavar="SECONDS")
    c.set_defaults(func=cmd_endorse)

    k = sub.add_parser("signer-key", help="print the Ed25519 signer key of a key file "
                       "(what --trusted-signer and trusted_signers take)")
    k.add_argument("--private-key", metavar="FILE", required=True)
    k.set_defaults(func=cmd_signer_key)
    return p


def main(argv=None) -> int:
    from phantom.privileges import PrivilegeError
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (DirectoryError, ConfigError, KeyFormatError, ValueError, PrivilegeError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
