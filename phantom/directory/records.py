"""Directory records: the format, signing, verification and ``parse_record``.

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
own; a bad one is refused by the server and ignored by clients.  A record may
name its ``endorsers`` (signed, like every field but ``sig`` and
``endorsements``): then only their endorsements count, anywhere.

Canonical JSON: ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``.  Documents are parsed strictly (no duplicate keys, no
floats, no NaN), and every string field must already be in canonical form
(endpoints as ``format_endpoint`` writes them, prefixes as ``ip_network``
prints them), so the bytes that were signed are the bytes re-derived.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import nacl.bindings as _nb
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from phantom import crypto, logsetup
from phantom.syntax import PEER_NAME, PEER_NAME_RULE, format_endpoint, parse_endpoint, \
    parse_network
from phantom.errors import ConfigError
from phantom.keys import KeyFormatError, decode_public_key
from phantom.network.canonical import STRICT_HOOKS, b64, canonical

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
MAX_BODY = 16 * 1024          # a request body: one record with 16 endpoints, 64 prefixes, 16 endorsements
MAX_ENDORSERS = MAX_ENDORSEMENTS      # every signer a record names always has a place
RECORD_FIELDS = frozenset(("name", "public_key", "signing_key", "endpoints", "allowed_ips",
                           "seq", "expires", "revoked", "endorsements", "sig", "protocol",
                           "endorsers"))
# "protocol" is optional (signed when present): what the key speaks, "phantom"
# (the default, and what a record without the field means) or "wireguard" (a
# stock WireGuard peer, docs/wireguard.md).
# "endorsers" is optional (signed when present): the owner's choice of who may
# endorse it, 1 to MAX_ENDORSERS Ed25519 keys; an endorsement by any other signer
# is refused by a directory and never counts for a client.  Without the field,
# any signer may.  (Parsers older than the field refuse a record carrying it, as
# an unknown field; records without it are unchanged.)
OPTIONAL_FIELDS = frozenset(("endorsements", "protocol", "endorsers"))
PROTOCOLS = ("phantom", "wireguard")
UNSIGNED_FIELDS = frozenset(("sig", "endorsements"))
ENDORSEMENT_FIELDS = frozenset(("signer", "expires", "sig"))

# --- errors -------------------------------------------------------------------------------------
class RecordError(ValueError):
    """A record or endorsement is malformed, badly signed or expired."""


class DirectoryError(Exception):
    """The directory could not do what was asked."""


UNAVAILABLE = "directory unavailable"


class DirectoryUnavailable(DirectoryError):
    """Unreachable, timed out, 5xx, or an answer that is not JSON (and no usable cache).

    Its text always reads ``directory unavailable: DETAIL``: the one wording the
    CLI, the daemon's API (503) and the docs use; ``detail`` is the reason alone."""

    def __init__(self, detail: str):
        detail = str(detail)
        if detail.startswith(UNAVAILABLE + ": "):
            detail = detail[len(UNAVAILABLE) + 2:]
        super().__init__("%s: %s" % (UNAVAILABLE, detail))
        self.detail = detail


class DirectoryRejected(DirectoryError):
    """The directory answered 4xx to a publish, revoke or endorse."""

    def __init__(self, status: int, message: str, retry_after: Optional[float] = None):
        super().__init__("directory refused (HTTP %d): %s" % (status, message))
        self.status = status
        self.message = message
        self.retry_after = retry_after            # a 429: seconds the directory asked to wait


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

    def expanded_secret(self, prefix_label: bytes) -> tuple[bytes, bytes]:
        """(scalar, nonce prefix): the Ed25519 secret in its expanded form, for
        a signer that needs it (libtorrent's BEP 44); the prefix is keyed with
        our nonce key under ``prefix_label``.  The caller wipes what it keeps."""
        return bytes(self._scalar), crypto.blake2b(prefix_label, digest_size=32, key=bytes(self._nonce_key))

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
# canonical() and b64() are the network's (phantom/network/canonical.py): one
# canonical JSON for everything signed


def strict_loads(raw: bytes | str) -> Any:
    """Parse JSON, refusing duplicate keys, floats, NaN/Infinity and absurd nesting."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8")
    try:
        return json.loads(raw, **STRICT_HOOKS)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


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


def name_field(value: Any) -> str:
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
    protocol: str = "phantom"                           # what the key speaks
    endorsers: frozenset = frozenset()                  # who may endorse it (empty: anyone)

    def may_endorse(self, signer: bytes) -> bool:
        """True when the owner lets ``signer`` endorse this record."""
        return not self.endorsers or bytes(signer) in self.endorsers

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
                "expires": self.expires, "revoked": self.revoked, "protocol": self.protocol,
                "endorsed_by": sorted(b64(s) for s in self.endorsed_by),
                "endorsers": sorted(b64(s) for s in self.endorsers)}


def record_signed_bytes(doc: dict) -> bytes:
    return RECORD_DOMAIN + canonical({k: v for k, v in doc.items() if k not in UNSIGNED_FIELDS})


def endorsement_signed_bytes(public_key: bytes, name: str, expires: int) -> bytes:
    return ENDORSE_DOMAIN + canonical({"public_key": b64(public_key), "name": name,
                                       "expires": expires})


def make_record(signer: NodeSigner, name: str, endpoints: Iterable, allowed_ips: Iterable,
                seq: int, expires: int, revoked: bool = False, protocol: str = "phantom",
                endorsers: Iterable[bytes] = ()) -> dict:
    """A signed record document.  Endpoints may be "ip:port" strings or (host, port).
    ``protocol`` other than "phantom" is written (and signed) as the "protocol" field;
    ``endorsers`` (Ed25519 keys), when given, as the "endorsers" field: only they
    may endorse the record."""
    if protocol not in PROTOCOLS:
        raise RecordError("protocol must be one of %s" % ", ".join(PROTOCOLS))
    keys = {bytes(e) for e in endorsers}
    if any(len(k) != KEY_SIZE for k in keys):
        raise RecordError("an endorser is a %d-byte Ed25519 key" % KEY_SIZE)
    endorsers = sorted(b64(k) for k in keys)
    if len(endorsers) > MAX_ENDORSERS:
        raise RecordError("a record names at most %d endorsers" % MAX_ENDORSERS)
    eps = []
    for i, e in enumerate(endpoints):
        if isinstance(e, (tuple, list)):
            e = format_endpoint((str(e[0]), int(e[1])))
        eps.append(_canonical_endpoint(e, i))
    nets = [_canonical_network(str(n) if not isinstance(n, str) else n, i)
            for i, n in enumerate(allowed_ips)]
    doc = {"name": name_field(name), "public_key": b64(signer.public_key),
           "signing_key": b64(signer.signing_key), "endpoints": eps, "allowed_ips": nets,
           "seq": _int_field(seq, "seq", 0, MAX_SEQ),
           "expires": _int_field(expires, "expires", 1, MAX_TIME), "revoked": bool(revoked),
           "endorsements": []}
    if protocol != "phantom":
        doc["protocol"] = protocol
    if endorsers:
        doc["endorsers"] = endorsers
    doc["sig"] = b64(signer.sign(record_signed_bytes(doc)))
    return doc


def make_endorsement(signer: NodeSigner, public_key: bytes, name: str, expires: int) -> dict:
    """A trusted signer's endorsement of (public_key, name) until ``expires``."""
    sig = signer.sign(endorsement_signed_bytes(public_key, name_field(name),
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
    valid signer when ``trusted_signers`` is None), among the record's own
    ``endorsers`` when it names them.  A bad endorsement is ignored, or raises
    with ``strict_endorsements`` (the server's mode); a valid one by a signer the
    record does not name is ignored either way (the store refuses it, 403).
    """
    if not isinstance(doc, dict):
        raise RecordError("a record is a JSON object")
    missing = (RECORD_FIELDS - OPTIONAL_FIELDS) - set(doc)
    if missing:
        raise RecordError("record lacks field(s): %s" % ", ".join(sorted(missing)))
    unknown = set(doc) - RECORD_FIELDS
    if unknown:
        raise RecordError("unknown record field(s): %s" % ", ".join(sorted(map(str, unknown))))
    name = name_field(doc["name"])
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
    protocol = doc.get("protocol", "phantom")
    if protocol not in PROTOCOLS:
        raise RecordError("protocol must be one of %s" % ", ".join(PROTOCOLS))
    endorsements = doc.get("endorsements", [])
    if not isinstance(endorsements, list) or len(endorsements) > MAX_ENDORSEMENTS:
        raise RecordError("endorsements must be a list of at most %d" % MAX_ENDORSEMENTS)
    endorsers = _endorsers_field(doc["endorsers"]) if "endorsers" in doc else frozenset()

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
        if endorsers and signer not in endorsers:
            # the owner did not name this signer: it never counts (a directory
            # refuses it; one that stored it anyway, or an owner's own DHT item,
            # gains nothing by serving it)
            log.debug("ignoring an endorsement on the record of %s by %s: not one of its "
                      "endorsers", name, b64(signer))
            continue
        if trusted is None or signer in trusted:
            endorsed.add(signer)
    return Record(name, public_key, signing_key, endpoints, allowed, seq, expires, revoked,
                  frozenset(endorsed), doc, protocol, endorsers)


def _endorsers_field(value: Any) -> frozenset:
    """The "endorsers" field: 1 to MAX_ENDORSERS distinct Ed25519 keys, in canonical
    base64 and sorted (one way to write each list)."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ENDORSERS:
        raise RecordError("endorsers, when present, is a list of 1 to %d Ed25519 keys"
                          % MAX_ENDORSERS)
    keys = [_b64_field(v, "endorsers[%d]" % i, KEY_SIZE) for i, v in enumerate(value)]
    if value != sorted(set(value)):
        raise RecordError("endorsers must be sorted, each key once")
    return frozenset(keys)

