"""The public-key directory: signed records, a JSON service over a store, and its client.

``phantom directory serve`` runs an aiohttp service (on uvloop) over a store.
Nodes publish *records* about themselves; anyone can look them up by public
key or by name.  See docs/directory.md for the format and the trust model.

The package, along its seams:

  records.py   the record format, signing (NodeSigner), verification, parse_record
  store/       one module per backend behind one interface (base.py)
  server.py    the aiohttp application (create_app, start_server, serve_forever)
  client.py    DirectoryClient: publish, resolve, cache, pins
  defaults.py  the defaults the command line shows (no imports: its parser needs
               neither the server nor the client)

The ``phantom directory`` subcommands are the CLI's
(:mod:`phantom.cli.directory`); what they use is importable from here.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_face
from .records import (  # noqa: F401
    ENDORSE_DOMAIN, ENDORSEMENT_FIELDS, KEY_SIZE, MAX_ALLOWED_IPS, MAX_BODY, MAX_ENDORSEMENTS,
    MAX_ENDORSERS, MAX_ENDPOINTS, MAX_SEQ, MAX_TIME, NONCE_LABEL, RECORD_DOMAIN, RECORD_FIELDS,
    SIG_SIZE, UNSIGNED_FIELDS, DirectoryError, DirectoryRejected,
    DirectoryUnavailable, NodeSigner, Record, RecordError, b64, b64url, canonical,
    endorsement_signed_bytes, key_from_text, make_endorsement, make_record, parse_record,
    record_signed_bytes, signing_key_of, strict_loads, verify_binding, verify_endorsement,
    verify_signature)
# The store, the server and the client are loaded when first named: a
# command that only reads or makes records (``phantom join``, ``phantom
# directory lookup``'s parsing) does not pay for aiohttp's server and
# client at start (about 0.4 s of CPU per process).
_LAZY = {
    "store": ("LIST_LIMIT", "DirectoryStore", "StoredRecord"),
    "server": ("BODY_TIMEOUT", "CLOCK_SKEW", "DEFAULT_DB", "DEFAULT_MAX_TTL", "DEFAULT_PORT",
               "PURGE_INTERVAL", "Forbidden", "Gone", "Limits", "RequestTimeout",
               "create_app", "serve_forever", "start_server"),
    "client": ("CACHE_ENTRIES", "CACHE_REFRESH", "CACHE_TTL", "CLIENT_TIMEOUT", "DEFAULT_TTL",
               "MAX_RESPONSE", "NEGATIVE_TTL", "REVOCATION_TTL", "DirectoryClient"),
}

if TYPE_CHECKING:                        # the same names for type checkers (and the layout test's graph)
    from . import network  # noqa: F401
    from .client import (CACHE_ENTRIES, CACHE_REFRESH, CACHE_TTL, CLIENT_TIMEOUT,  # noqa: F401
                         DEFAULT_TTL, MAX_RESPONSE, NEGATIVE_TTL, REVOCATION_TTL, DirectoryClient)
    from .server import (BODY_TIMEOUT, CLOCK_SKEW, DEFAULT_DB, DEFAULT_MAX_TTL,  # noqa: F401
                         DEFAULT_PORT, PURGE_INTERVAL, Forbidden, Gone, Limits, RequestTimeout,
                         create_app, serve_forever, start_server)
    from .store import LIST_LIMIT, DirectoryStore, StoredRecord  # noqa: F401

__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY, submodules=("network",))
