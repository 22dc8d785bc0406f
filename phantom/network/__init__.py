"""The network's trust core (issue 20; the certificates carry the groups of issue 21
and the routes of issue 22).

Sans-IO apart from two small file helpers (key files, the member snapshot):
the daemon, the directory server and the CLI call what is here.  See
docs/network.md for the formats and the trust rules.

* :mod:`.keys` -- Ed25519 keys (libsodium), the network fingerprint, signatures
* :mod:`.definition` -- the network definition, signed by the authority
* :mod:`.certificate` -- member certificates, signed by an admission key
* :mod:`.removal` -- removals, and the set of removals in force
* :mod:`.invite` -- invite tokens and the records a directory keeps
* :mod:`.allocate` -- address allocation (a pure function)
* :mod:`.members` -- the member set a member daemon keeps, by deltas
* :mod:`.join` -- the join transaction, renewal, removal, invites on a store's ledger
* :mod:`.rotate` -- admission-key rotation
* :mod:`.authority`, :mod:`.cli` -- the authority's state directory, ``phantom network``
* :mod:`.errors` -- every refusal, with its reason and user-facing sentence
"""

from .allocate import allocate, allocate_ipv4, allocate_ipv6, derived_ipv6
from .certificate import (MAX_CERT_SIZE, Certificate, check_budget, issue_certificate,
                          parse_certificate, verify_certificate)
from .definition import (AdmissionKey, Definition, Server, is_newer, make_definition,
                         parse_definition, revise)
from .errors import (AllocationError, FormatError, InviteError, NetworkError, Reason, Refused,
                     headline)
from .invite import Invite, InviteToken, create_invite, hash_secret, parse_invite, parse_token
from .members import Delta, Member, MemberChange, MemberSet, parse_delta
from .keys import SigningKey, fingerprint, load_key, save_key
from .removal import Removal, RemovalSet, make_removal, verify_removal

__all__ = [
    "AdmissionKey", "AllocationError", "Certificate", "Definition", "FormatError", "Invite",
    "InviteError", "InviteToken", "MAX_CERT_SIZE", "Delta", "Member", "MemberChange",
    "MemberSet", "parse_delta", "NetworkError", "Reason", "Refused",
    "Removal", "RemovalSet", "Server", "SigningKey", "allocate", "allocate_ipv4",
    "allocate_ipv6", "check_budget", "create_invite", "derived_ipv6", "fingerprint",
    "hash_secret", "headline", "is_newer", "issue_certificate", "load_key", "make_definition",
    "make_removal", "parse_certificate", "parse_definition", "parse_invite", "parse_token",
    "revise", "save_key", "verify_certificate", "verify_removal",
]
