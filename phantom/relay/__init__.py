"""The relay role's control logic: which pairs of keys a relay forwards
between, under which relay ids, within which budgets (``pairs``).  The
forwarding itself is the data paths' (``set_relay_pair``); the peer's side
of using a relay (when to fall back to one) is :mod:`phantom.nat.traversal`."""

from .pairs import MAX_PAIRS, MAX_PAIRS_PER_KEY, RelayPairs  # noqa: F401
