"""Why a network document was refused: one exception family, one reason each.

Every refusal is a :class:`NetworkError` (a ``ValueError``), so a caller that
only wants "valid or not" catches that.  A verification failure is a
:class:`Refused` carrying a :class:`Reason` -- a small stable number that a
later step puts in the handshake's refusal payload -- and a user-facing
sentence built from the reason, the kind of document and the network's name:

    certificate expired 3600 s ago
    not a member of corp (the certificate is for network 7x4q...)
    removed by the network

The wording is the contract the CLI, the daemon logs and the docs share
(docs/network.md, "Errors").
"""

from __future__ import annotations

import enum
from typing import Optional


class Reason(enum.IntEnum):
    """Why a document was refused.  The numbers are part of the wire format
    (a handshake refusal carries one): never renumber, only add."""

    MALFORMED = 1           # not a well-formed document of its kind
    NOT_MEMBER = 2          # no certificate at all
    WRONG_NETWORK = 3       # a document for another network
    WRONG_AUTHORITY = 4     # a definition signed by another authority than the pinned one
    BAD_SIGNATURE = 5       # the signature does not verify: forged or tampered
    UNKNOWN_ISSUER = 6      # signed by a key the definition does not list
    ISSUER_EXPIRED = 7      # signed by an admission key past its expiry
    EXPIRED = 8
    NOT_YET_VALID = 9
    LIFETIME = 10           # a certificate valid for longer than the network allows
    OUTSIDE_PREFIX = 11     # addresses outside the network's prefixes
    BAD_ROUTE = 12          # a route overlapping the network's own prefixes
    REMOVED = 13            # the key was removed by the network
    WRONG_KEY = 14          # a certificate for another key than the one that presented it
    STALE = 15              # an older version than the one already held


def _what(what: str) -> str:
    return what or "document"


_TEMPLATES = {
    Reason.MALFORMED: "malformed {what}",
    Reason.NOT_MEMBER: "not a member of {net}",
    Reason.WRONG_NETWORK: "{what} is for another network, not {net}",
    Reason.WRONG_AUTHORITY: "{what} is not signed by the authority of {net}",
    Reason.BAD_SIGNATURE: "{what} signature does not verify (forged or tampered)",
    Reason.UNKNOWN_ISSUER: "{what} signed by a key that {net} does not list",
    Reason.ISSUER_EXPIRED: "{what} signed by an expired admission key of {net}",
    Reason.EXPIRED: "{what} expired",
    Reason.NOT_YET_VALID: "{what} not yet valid",
    Reason.LIFETIME: "{what} lifetime is longer than {net} allows",
    Reason.OUTSIDE_PREFIX: "{what} addresses are outside {net}'s prefixes",
    Reason.BAD_ROUTE: "{what} routes overlap {net}'s own prefixes",
    Reason.REMOVED: "removed by the network",
    Reason.WRONG_KEY: "{what} is for another key",
    Reason.STALE: "{what} is older than the one already known",
}


def headline(reason: Reason, what: str = "certificate", network: str = "the network") -> str:
    """The short user-facing sentence for ``reason`` (what the peer is told)."""
    if reason == Reason.WRONG_NETWORK and what == "certificate":
        return "not a member of %s" % network
    return _TEMPLATES[Reason(reason)].format(what=_what(what), net=network)


class NetworkError(ValueError):
    """A network document, token or request was refused (every error here)."""


class Refused(NetworkError):
    """A document was refused: ``reason`` says why, ``str()`` says it to a user.

    ``detail`` is the specific part ("at 2025-01-01T00:00:00Z", "field ip4:
    ..."), appended after the headline in parentheses or after a colon."""

    def __init__(self, reason: Reason, what: str = "certificate", network: str = "the network",
                 detail: str = ""):
        self.reason = Reason(reason)
        self.what = what
        self.network = network
        self.detail = detail
        self.headline = headline(self.reason, what, network)
        text = self.headline
        if detail:
            text += (": " if self.reason == Reason.MALFORMED else " (") + detail + \
                ("" if self.reason == Reason.MALFORMED else ")")
        super().__init__(text)

    @property
    def code(self) -> str:
        """The reason as a lowercase word ("expired"), for logs, counters and APIs."""
        return self.reason.name.lower()


class FormatError(Refused):
    """A document is malformed: ``path`` names the field ("groups[2]"), ``problem``
    says what is wrong with it."""

    def __init__(self, problem: str, path: str = "", what: str = "document"):
        self.path = path
        self.problem = problem
        super().__init__(Reason.MALFORMED, what, detail=("%s: %s" % (path, problem)) if path
                         else problem)

    def about(self, what: str) -> "FormatError":
        """The same error, naming the kind of document."""
        return FormatError(self.problem, self.path, what)

    def under(self, prefix: str) -> "FormatError":
        """The same error with ``prefix`` before its path ("admission[1]" + ".key")."""
        path = prefix + ("." + self.path if self.path and not self.path.startswith("[")
                         else self.path)
        return FormatError(self.problem, path, self.what)


class InviteError(NetworkError):
    """An invite token or an invite redemption was refused (``code`` says why:
    malformed, too_long, wrong_network, invalid, expired, used, revoked)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class AllocationError(NetworkError):
    """No address could be allocated (the prefix is full, or bad arguments)."""


class PolicyError(NetworkError):
    """A policy was refused, whole.  ``rule`` is the rule's index from 0 (None
    for a top-level field; the message counts from 1, as the admin reads the
    file), ``line`` the line of the source file when known."""

    def __init__(self, problem: str, rule: Optional[int] = None, field: str = "",
                 line: Optional[int] = None, where: str = ""):
        self.problem = problem
        self.rule = rule
        self.field = field
        self.line = line
        if not where:
            where = ("rule %d" % (rule + 1)) if rule is not None else ""
        self.where = where
        parts = []
        if where:
            parts.append(where)
        if line is not None:
            parts.append("line %d" % line)
        head = "policy"
        if parts:
            head += " " + parts[0] + (" (%s)" % parts[1] if len(parts) > 1 else "")
        if field:
            head += ", " + field
        super().__init__("%s: %s" % (head, problem))

    def at_line(self, line: Optional[int]) -> "PolicyError":
        return PolicyError(self.problem, self.rule, self.field, line, self.where)
