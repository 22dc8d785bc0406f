"""Removals: an admin takes a member out of the network.

A removal is signed by an admission key (the member's own key is not
needed)::

    {"iss":"<Ed25519 admission key>","key":"<X25519 member key>","net":"<fingerprint>",
     "sig":"<signature>","time":1760000000,"v":1}

It refuses every certificate of that key whose ``nbf`` is at or before the
removal's ``time``: every certificate issued before the removal, however
long it has left.  A certificate issued later (the admin invited the key
again) is not affected.  Because a certificate lives at most the
definition's ``cert_lifetime``, a removal has nothing left to refuse after
``time + cert_lifetime``: that is when it is dropped (bounded storage,
:meth:`RemovalSet.prune`).

Like everything an admission key signs, a removal counts only while its
issuer is listed and unexpired in the definition; a directory rotating its
admission key re-signs the removals still in force.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

from .canonical import (KEY_SIZE, SIG_SIZE, TIME_MAX, b64, bytes_field, canonical, int_field,
                        object_fields, strict_loads)
from .canonical import signed_bytes  # noqa: F401  (removal.signed_bytes, as before)
from .definition import Definition
from .errors import FormatError, Reason, Refused
from .keys import (REMOVAL_DOMAIN, SigningKey, fingerprint_field, key_field, sign_document,
                   valid_x25519, verify_document)

VERSION = 1
WHAT = "removal"
MAX_REMOVAL_SIZE = 512
MAX_SKEW = 120
FIELDS = ("v", "net", "key", "time", "iss", "sig")


@dataclass(frozen=True)
class Removal:
    network: str
    key: bytes                 # the removed member's X25519 key
    time: int                  # certificates with nbf <= time are refused
    issuer: bytes
    sig: bytes = field(repr=False)
    doc: dict = field(default_factory=dict, repr=False, compare=False)

    def encode(self) -> bytes:
        return canonical(self.doc)

    def removes(self, cert: Any) -> bool:
        return bytes(cert.key) == self.key and cert.not_before <= self.time

    def expires_at(self, definition: Definition) -> int:
        """After this time no certificate it refuses can still be valid."""
        return self.time + definition.cert_lifetime

    def summary(self) -> dict:
        return {"public_key": b64(self.key), "time": self.time, "issuer": b64(self.issuer)}


def _from_doc(doc: Any) -> Removal:
    object_fields(doc, FIELDS)
    if not (isinstance(doc["v"], int) and not isinstance(doc["v"], bool) and doc["v"] == VERSION):
        raise FormatError("version %r is not supported" % (doc["v"],), "v")
    key = key_field(doc["key"], "key", valid_x25519, "is not a usable X25519 key")
    return Removal(fingerprint_field(doc["net"], "net"), key,
                   int_field(doc["time"], "time", 0, TIME_MAX),
                   bytes_field(doc["iss"], "iss", KEY_SIZE),
                   bytes_field(doc["sig"], "sig", SIG_SIZE), doc)


def parse_removal(raw: Any) -> Removal:
    """Form only; :func:`verify_removal` checks the signature."""
    doc = raw if isinstance(raw, dict) else strict_loads(raw, MAX_REMOVAL_SIZE, WHAT)
    try:
        return _from_doc(doc)
    except FormatError as exc:
        raise exc.about(WHAT) from None


def verify_removal(raw: Any, definition: Definition, now: float, skew: float = MAX_SKEW
                   ) -> Removal:
    """A removal valid for ``definition`` at ``now``, or Refused: wrong network,
    issuer not listed or expired, bad signature, dated in the future."""
    r = parse_removal(raw)
    if r.network != definition.fingerprint:
        raise Refused(Reason.WRONG_NETWORK, WHAT, definition.name,
                      "it is for network %s" % r.network)
    definition.admission_key(r.issuer, now, WHAT)
    if not verify_document(r.issuer, REMOVAL_DOMAIN, r.doc, r.sig):
        raise Refused(Reason.BAD_SIGNATURE, WHAT, definition.name)
    if r.time > now + skew:
        raise Refused(Reason.NOT_YET_VALID, WHAT, definition.name,
                      "dated %d s in the future" % (r.time - now))
    return r


def make_removal(definition: Definition, admission: SigningKey, key: bytes, now: float) -> Removal:
    """Sign the removal of ``key`` at ``now`` (``phantom network remove``)."""
    definition.admission_key(admission.public, now, WHAT)
    body = {"v": VERSION, "net": definition.fingerprint, "key": b64(key), "time": int(now),
            "iss": b64(admission.public)}
    return parse_removal(sign_document(admission, REMOVAL_DOMAIN, body))


class RemovalSet:
    """The removals in force, one per key (the latest), looked up in O(1)."""

    def __init__(self, removals: Iterable[Removal] = ()):
        self._by_key: dict = {}
        for r in removals:
            self.add(r)

    def add(self, removal: Removal) -> bool:
        """Keep ``removal`` (a verified one); False when a later one for the key is held."""
        held = self._by_key.get(removal.key)
        if held is not None and held.time >= removal.time:
            return False
        self._by_key[removal.key] = removal
        return True

    def removes(self, cert: Any) -> Optional[Removal]:
        """The removal that refuses ``cert``, or None."""
        r = self._by_key.get(bytes(cert.key))
        return r if r is not None and r.removes(cert) else None

    def get(self, key: bytes) -> Optional[Removal]:
        return self._by_key.get(bytes(key))

    def prune(self, definition: Definition, now: float) -> list:
        """Drop the removals that can no longer refuse anything; return them."""
        gone = [r for r in self._by_key.values() if r.expires_at(definition) < now]
        for r in gone:
            del self._by_key[r.key]
        return gone

    def discard_issuer_invalid(self, definition: Definition, now: float) -> list:
        """Drop removals whose issuer ``definition`` no longer lists (or lists as expired)."""
        gone = []
        for r in list(self._by_key.values()):
            try:
                definition.admission_key(r.issuer, now, WHAT)
            except Refused:
                gone.append(r)
                del self._by_key[r.key]
        return gone

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Removal]:
        return iter(list(self._by_key.values()))

    def __contains__(self, key: bytes) -> bool:
        return bytes(key) in self._by_key
