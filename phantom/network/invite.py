"""Invites: the one-line token ``phantom join`` takes, and the record a
directory keeps for it.

Token::

    phantom1.<base64url, no padding, of canonical JSON>
    {"dir":["https://dir.example.com"],"id":"<16 base32>","net":"<fingerprint>",
     "secret":"<32 bytes, base64>","v":1}

It carries where to enrol (the directory URLs), what network to expect (its
fingerprint: ``join`` refuses a definition signed by any other authority, so
a hostile directory cannot enrol the machine elsewhere), which invite it is
and a 32-byte secret.  The directory stores only ``BLAKE2b-256(domain ||
secret)``: a copy of its database does not yield usable tokens.  A
redemption checks, in constant time, the secret's hash, then revocation,
expiry and remaining uses; the store consumes a use in the same transaction
that allocates the member's addresses.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional

from phantom import crypto

from . import names
from .canonical import (KEY_SIZE, TIME_MAX, b64, b64url, bool_field, bytes_field, canonical,
                        from_b64url, int_field, list_field, object_fields, strict_loads)
from .certificate import MAX_GROUPS, check_budget
from .definition import MAX_DIRECTORIES, Definition
from .errors import FormatError, InviteError
from .keys import fingerprint_field

PREFIX = "phantom1."
VERSION = 1
MAX_TOKEN_LEN = 2048
MAX_TOKEN_DOC = 1536
SECRET_SIZE = 32
ID_BYTES = 10                     # 16 base32 characters
HASH_DOMAIN = b"phantom-invite-secret-v1"
MAX_USES = 1_000_000
MAX_INVITE_TTL = 365 * 86400
DEFAULT_INVITE_TTL = 86400
TOKEN_FIELDS = ("v", "dir", "net", "id", "secret")
RECORD_FIELDS = ("v", "id", "net", "secret_hash", "name", "groups", "uses", "used", "created",
                 "expires", "revoked")
_B32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def id_field(value: Any, path: str = "id") -> str:
    if not isinstance(value, str) or len(value) != 16 or not set(value) <= _B32:
        raise FormatError("must be an invite id (16 characters a-z, 2-7)", path)
    return value


@dataclass(frozen=True)
class InviteToken:
    """What a token carries."""

    directory: tuple
    network: str
    id: str
    secret: bytes = field(repr=False)

    def encode(self) -> str:
        doc = {"v": VERSION, "dir": list(self.directory), "net": self.network, "id": self.id,
               "secret": b64(self.secret)}
        return PREFIX + b64url(canonical(doc))

    def __str__(self) -> str:         # never the secret by accident
        return "invite %s for network %s" % (self.id, self.network)


def parse_token(text: Any, expect_network: Optional[str] = None) -> InviteToken:
    """Decode a token; InviteError with a code and a sentence saying what is wrong:
    ``malformed`` (not a phantom invite, damaged or truncated), ``too_long``,
    ``wrong_network`` (when ``expect_network`` is given and differs)."""
    if not isinstance(text, str):
        raise InviteError("malformed", "an invite token is text")
    text = text.strip()
    if len(text) > MAX_TOKEN_LEN:
        raise InviteError("too_long", "invite token is %d characters; at most %d (is this "
                          "really an invite?)" % (len(text), MAX_TOKEN_LEN))
    if not text.startswith(PREFIX):
        if text.startswith("phantom") and "." in text[:12]:
            raise InviteError("malformed", "invite token version %r is not supported (this "
                              "phantom reads %r tokens)" % (text.split(".", 1)[0], PREFIX[:-1]))
        raise InviteError("malformed", "not a phantom invite token (it starts with %r)" % PREFIX)
    body = text[len(PREFIX):]
    if not body:
        raise InviteError("malformed", "invite token is truncated (nothing after %r)" % PREFIX)
    try:
        raw = from_b64url(body)
    except ValueError:
        bad = next((c for c in body if not (c.isascii() and (c.isalnum() or c in "-_"))), None)
        if bad is not None:
            raise InviteError("malformed", "invite token contains %r: copy it exactly, in one "
                              "piece" % bad) from None
        raise InviteError("malformed", "invite token is truncated or damaged: copy the whole "
                          "token") from None
    try:
        doc = strict_loads(raw, MAX_TOKEN_DOC, "invite token")
        object_fields(doc, TOKEN_FIELDS)
        if doc["v"] != VERSION or isinstance(doc["v"], bool):
            raise FormatError("version %r is not supported" % (doc["v"],), "v")
        dirs = tuple(names.url(u, "dir[%d]" % i)
                     for i, u in enumerate(list_field(doc["dir"], "dir", MAX_DIRECTORIES, 1)))
        token = InviteToken(dirs, fingerprint_field(doc["net"], "net"), id_field(doc["id"]),
                            bytes_field(doc["secret"], "secret", SECRET_SIZE))
    except FormatError as exc:
        raise InviteError("malformed", "invite token is truncated or damaged (%s)"
                          % (exc.detail or exc)) from None
    if token.encode() != text:
        raise InviteError("malformed", "invite token is not in canonical form (damaged?)")
    if expect_network is not None and token.network != expect_network:
        raise InviteError("wrong_network", "this invite is for network %s, not %s"
                          % (token.network, expect_network))
    return token


def hash_secret(secret: bytes) -> bytes:
    return crypto.blake2b(HASH_DOMAIN + bytes(secret), digest_size=32)


@dataclass(frozen=True)
class Invite:
    """What a directory stores for an invite (never the secret)."""

    id: str
    network: str
    secret_hash: bytes = field(repr=False)
    name: Optional[str]                # the member's name, when the invite fixes it
    groups: tuple
    uses: int                          # how many joins it allows
    used: int
    created: int
    expires: int
    revoked: bool = False

    def status(self, now: float) -> str:
        if self.revoked:
            return "revoked"
        if self.used >= self.uses:
            return "used"
        if self.expires <= now:
            return "expired"
        return "active"

    def check(self, secret: bytes, now: float) -> None:
        """Raise InviteError unless ``secret`` redeems this invite at ``now``.

        The secret is checked first (constant time), so a caller without it
        learns nothing about the invite's state."""
        if not crypto.equal(hash_secret(secret), self.secret_hash):
            raise InviteError("invalid", "invite not valid")
        state = self.status(now)
        if state == "revoked":
            raise InviteError("revoked", "invite revoked")
        if state == "used":
            raise InviteError("used", "invite already used" if self.uses == 1 else
                              "invite used up (%d of %d uses)" % (self.used, self.uses))
        if state == "expired":
            raise InviteError("expired", "invite expired")

    def redeem(self, secret: bytes, now: float) -> "Invite":
        """The invite after one more use (what the store writes back), or InviteError."""
        self.check(secret, now)
        return replace(self, used=self.used + 1)

    def revoke(self) -> "Invite":
        return replace(self, revoked=True)

    def to_doc(self) -> dict:
        return {"v": VERSION, "id": self.id, "net": self.network,
                "secret_hash": b64(self.secret_hash), "name": self.name,
                "groups": list(self.groups), "uses": self.uses, "used": self.used,
                "created": self.created, "expires": self.expires, "revoked": self.revoked}

    def summary(self, now: float) -> dict:
        """For ``phantom network invites`` (no secret, no hash)."""
        return {"id": self.id, "name": self.name, "groups": list(self.groups),
                "uses": self.uses, "used": self.used, "created": self.created,
                "expires": self.expires, "status": self.status(now)}


def parse_invite(raw: Any) -> Invite:
    """A stored invite record back from its document (FormatError if damaged)."""
    doc = raw if isinstance(raw, dict) else strict_loads(raw, 4096, "invite")
    try:
        object_fields(doc, RECORD_FIELDS)
        if doc["v"] != VERSION or isinstance(doc["v"], bool):
            raise FormatError("version %r is not supported" % (doc["v"],), "v")
        name = doc["name"]
        if name is not None:
            names.label(name, "name")
        groups = [names.group(g, "groups[%d]" % i)
                  for i, g in enumerate(list_field(doc["groups"], "groups", MAX_GROUPS))]
        uses = int_field(doc["uses"], "uses", 1, MAX_USES)
        return Invite(id_field(doc["id"]), fingerprint_field(doc["net"], "net"),
                      bytes_field(doc["secret_hash"], "secret_hash", KEY_SIZE), name,
                      tuple(groups), uses, int_field(doc["used"], "used", 0, uses),
                      int_field(doc["created"], "created", 0, TIME_MAX),
                      int_field(doc["expires"], "expires", 0, TIME_MAX),
                      bool_field(doc["revoked"], "revoked"))
    except FormatError as exc:
        raise exc.about("invite") from None


def create_invite(definition: Definition, now: float, *, name: Optional[str] = None,
                  groups: Iterable[str] = (), uses: int = 1, ttl: int = DEFAULT_INVITE_TTL,
                  directory: Optional[Iterable[str]] = None,
                  random_bytes: Callable[[int], bytes] = crypto.random_bytes
                  ) -> tuple[InviteToken, Invite]:
    """A new invite: the token to hand out and the record to store.

    ``name`` fixes the member's name (then ``uses`` must be 1: names are
    unique); ``groups`` go into the certificate.  The name and groups are
    checked against the certificate's size budget now, so a join never fails
    on them.  ``directory`` defaults to the definition's URLs."""
    groups = sorted(set(groups))
    try:
        if name is not None:
            names.label(name, "name")
        check_budget(name if name is not None else "a" * names.LABEL_MAX, groups)
    except FormatError as exc:
        raise exc.about("invite") from None
    if name is not None and uses != 1:
        raise InviteError("malformed", "an invite that names the member is for one use")
    if not (isinstance(uses, int) and not isinstance(uses, bool) and 1 <= uses <= MAX_USES):
        raise InviteError("malformed", "uses must be 1..%d" % MAX_USES)
    if not (isinstance(ttl, int) and not isinstance(ttl, bool) and 60 <= ttl <= MAX_INVITE_TTL):
        raise InviteError("malformed", "an invite lasts 60 s to %d days"
                          % (MAX_INVITE_TTL // 86400))
    dirs = tuple(definition.directory if directory is None else directory)
    if not dirs:
        raise InviteError("malformed", "the network lists no directory URL to put in the invite")
    try:
        for i, u in enumerate(dirs):
            names.url(u, "directory[%d]" % i)
    except FormatError as exc:
        raise exc.about("invite") from None
    secret = random_bytes(SECRET_SIZE)
    invite_id = base64.b32encode(random_bytes(ID_BYTES)).decode("ascii").lower()
    token = InviteToken(dirs, definition.fingerprint, invite_id, secret)
    record = Invite(invite_id, definition.fingerprint, hash_secret(secret), name, tuple(groups),
                    uses, 0, int(now), int(now) + ttl)
    return token, record
