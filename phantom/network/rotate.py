"""Admission-key rotation: what the authority does when a directory host (or
its admission key) is stolen, or a key nears its expiry.

:func:`rotate` signs, with the authority key, the next definition (seq + 1)
listing a new admission key and no longer the retired ones; from then on
everything a retired key signed stops counting on every member that has the
new definition -- certificates, removals, (issue 21) policies -- including
whatever a thief signed with it.  So, in the same ledger transaction, it
re-issues every current member's certificate and re-signs every removal still
in force with the new key, and appends to the watch stream, in this order:

1. ``{"op": "network", "definition": ...}`` -- members take the new definition
   first (``MemberSet.apply`` checks that its authority is the pinned one);
2. one ``member`` event per re-issued certificate (same name, addresses,
   groups, routes, ``since``; an expired certificate is not re-issued);
3. one ``removed`` event per re-signed removal (same time);
4. the policy in force, re-signed with the next seq (same rules), as a
   ``policy`` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from .definition import DEFAULT_ADMISSION_LIFETIME, Definition, revise
from .errors import Refused
from .join import Ledger, current_policy, lapsed, reissue, set_policy
from .keys import SigningKey
from .removal import make_removal


@dataclass(frozen=True)
class Rotation:
    definition: Definition
    reissued: int
    resigned: int
    seq: int                          # the last event appended


def rotate(ledger: Ledger, current: Definition, authority: SigningKey,
           new_admission: SigningKey, now: float, *,
           lifetime: int = DEFAULT_ADMISSION_LIFETIME,
           retire: Optional[Iterable[bytes]] = None) -> Rotation:
    """List ``new_admission`` (valid ``lifetime`` seconds) and drop ``retire``
    (default: every other admission key); re-issue and re-sign under it."""
    if retire is None:
        retire = [a.key for a in current.admission if a.key != new_admission.public]
    definition = revise(current, authority, now,
                        add_admission=[(new_admission.public, int(now) + lifetime)],
                        remove_admission=retire)
    members = list(ledger.members())
    seq = ledger.append({"op": "network", "definition": definition.doc})
    reissued = resigned = 0
    for m in members:
        if m.removed is not None or m.cert.not_after <= now:
            continue                          # removed, or expired: it must join again
        try:
            definition.admission_key(m.cert.issuer, now)
            continue                          # its issuer is still listed: it still counts
        except Refused:
            pass
        seq = reissue(ledger, definition, new_admission, m.key, now).seq
        reissued += 1
    for m in members:
        if m.removed is None or lapsed(m, definition, now):
            continue
        removal = make_removal(definition, new_admission, m.key, m.removed)
        seq = ledger.append({"op": "removed", "removal": removal.doc})
        resigned += 1
    policy = current_policy(ledger)
    if policy is not None:
        seq = set_policy(ledger, definition, new_admission, policy.body, now)[1]
    return Rotation(definition, reissued, resigned, seq)
