"""How the privileged helper refuses a request: the reasons it counts, the
:class:`Refused` error, and the field checks both the protocol
(protocol.py) and the nftables table validator (nftspec.py) apply."""

from __future__ import annotations

from typing import Any, Optional

IFNAME_MAX = 15

# Why a request was refused (the helper counts each).
REASONS = ("oversized", "malformed", "unknown_op", "unknown_field", "bad_value", "not_allowed")


class Refused(ValueError):
    """A request the helper will not try: ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str, rid: Optional[int] = None):
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.id = rid


def short(value: Any, limit: int = 48) -> str:
    """A value from the request, for an error text: never long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def int_in(v: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise Refused("bad_value", "%s: %s is not an integer in %d..%d" % (what, short(v), lo, hi))
    return v


def valid_ifname(name: Any) -> bool:
    return (isinstance(name, str) and 1 <= len(name) <= IFNAME_MAX and name.isascii()
            and name.isprintable() and name not in (".", "..")
            and not any(c in name for c in "/: \t\n\"\\*"))
