"""The public-key directory: signed records, a JSON service over a store, and its client.

``phantom directory serve`` runs an aiohttp service (on uvloop) over a store.
Nodes publish *records* about themselves; anyone can look them up by public
key or by name.  See docs/directory.md for the format and the trust model.

The package, along its seams:

  records.py   the record format, signing (NodeSigner), verification, parse_record
  store/       one module per backend behind one interface (base.py)
  server.py    the aiohttp application (create_app, start_server, serve_forever)
  client.py    DirectoryClient: publish, resolve, cache, pins

The ``phantom directory`` subcommands are the CLI's
(:mod:`phantom.control.directory.cli`); what they use is importable from here.
"""

from .records import (  # noqa: F401
    ENDORSE_DOMAIN, ENDORSEMENT_FIELDS, KEY_SIZE, MAX_ALLOWED_IPS, MAX_ENDORSEMENTS,
    MAX_ENDORSERS, MAX_ENDPOINTS, MAX_SEQ, MAX_TIME, NONCE_LABEL, RECORD_DOMAIN, RECORD_FIELDS,
    SIG_SIZE, UNSIGNED_FIELDS, DirectoryError, DirectoryRejected,
    DirectoryUnavailable, NodeSigner, Record, RecordError, b64, b64url, canonical,
    endorsement_signed_bytes, key_from_text, make_endorsement, make_record, parse_record,
    record_signed_bytes, signing_key_of, strict_loads, verify_binding, verify_endorsement,
    verify_signature)
from .store import LIST_LIMIT, DirectoryStore, StoredRecord  # noqa: F401
from .server import (  # noqa: F401
    BODY_TIMEOUT, CLOCK_SKEW, DEFAULT_DB, DEFAULT_MAX_TTL, DEFAULT_PORT, MAX_BODY,
    PURGE_INTERVAL, Forbidden, Gone, Limits, RequestTimeout, create_app, serve_forever,
    start_server)
from .client import (  # noqa: F401
    CACHE_ENTRIES, CACHE_REFRESH, CACHE_TTL, CLIENT_TIMEOUT, DEFAULT_TTL, MAX_RESPONSE,
    NEGATIVE_TTL, REVOCATION_TTL, DirectoryClient)
