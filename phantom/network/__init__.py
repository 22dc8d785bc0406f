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

from typing import TYPE_CHECKING

from ..lazy import lazy_face

# Bound now (the module is small): the function ``allocate`` has its module's
# name, and importing the module later would rebind phantom.network.allocate
# to the module.
from .allocate import allocate, allocate_ipv4, allocate_ipv6, derived_ipv6

# The rest is loaded when first named (PEP 562), as phantom.directory does: a
# process that needs one part -- the directory's records need only .canonical,
# ``phantom network invite`` never needs .members (and its logging) -- imports
# only that part and what it imports.
_LAZY = {
    "certificate": ("MAX_CERT_SIZE", "Certificate", "check_budget", "issue_certificate",
                    "parse_certificate", "verify_certificate"),
    "definition": ("AdmissionKey", "Definition", "Server", "is_newer", "make_definition",
                   "parse_definition", "revise"),
    "errors": ("AllocationError", "FormatError", "InviteError", "NetworkError", "Reason",
               "Refused", "headline"),
    "invite": ("Invite", "InviteToken", "create_invite", "hash_secret", "parse_invite",
               "parse_token"),
    "members": ("Delta", "Member", "MemberChange", "MemberSet", "parse_delta"),
    "keys": ("SigningKey", "fingerprint", "load_key", "save_key"),
    "removal": ("Removal", "RemovalSet", "make_removal", "verify_removal"),
}
if TYPE_CHECKING:                        # the same names for type checkers (and the layout test's graph)
    from . import canonical, names  # noqa: F401
    from .certificate import (MAX_CERT_SIZE, Certificate, check_budget,  # noqa: F401
                              issue_certificate, parse_certificate, verify_certificate)
    from .definition import (AdmissionKey, Definition, Server, is_newer,  # noqa: F401
                             make_definition, parse_definition, revise)
    from .errors import (AllocationError, FormatError, InviteError,  # noqa: F401
                         NetworkError, Reason, Refused, headline)
    from .invite import (Invite, InviteToken, create_invite, hash_secret,  # noqa: F401
                         parse_invite, parse_token)
    from .keys import SigningKey, fingerprint, load_key, save_key  # noqa: F401
    from .members import Delta, Member, MemberChange, MemberSet, parse_delta  # noqa: F401
    from .removal import Removal, RemovalSet, make_removal, verify_removal  # noqa: F401

# the submodules the package used to import eagerly (with those they import):
# ``phantom.network.definition`` after a bare ``import phantom.network`` still works
__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY, submodules=("canonical", "names"))


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
