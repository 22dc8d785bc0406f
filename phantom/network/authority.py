"""The authority's state directory (``phantom network init`` makes it).

Files (the directory is 0700; secrets 0600, written atomically)::

    authority.key   the network's authority key (Ed25519): signs network.json only;
                    move it offline after init (nothing day to day needs it)
    admission.key   the admission key the definition lists: signs certificates,
                    removals and policies (a directory front end holds a copy)
    network.json    the signed network definition (public)
    admin.token     the bearer token of the directory's admin API (issue 20's next step)
    ledger.json     invites (secret hashes only), members, removals and the
                    watch stream's events: phantom.network.join.MemoryLedger
    .lock           flock(2) held by every command that writes the ledger

Every change to the ledger runs in :meth:`AuthorityDir.transaction`: an
exclusive lock, the ledger read, the change, the ledger written atomically
(or nothing written when the change raised).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path
from typing import Any, Iterator, Optional

from phantom import crypto

from .canonical import b64url, canonical, strict_loads
from .definition import (DEFAULT_ADMISSION_LIFETIME, MAX_DEFINITION_SIZE, Definition,
                         make_definition, parse_definition)
from .errors import NetworkError
from .join import MemoryLedger
from .keys import SigningKey, atomic_write, load_key, read_limited, save_key

AUTHORITY_KEY = "authority.key"
ADMISSION_KEY = "admission.key"
DEFINITION = "network.json"
ADMIN_TOKEN = "admin.token"
LEDGER = "ledger.json"
LOCK = ".lock"
MAX_LEDGER_SIZE = 256 * 1024 * 1024


class AuthorityError(NetworkError):
    """The state directory is missing, damaged or not what it should be."""


def init(path: Any, name: str, now: float, *, admission_lifetime: int = DEFAULT_ADMISSION_LIFETIME,
         **options: Any) -> "AuthorityDir":
    """Create a network in the directory ``path`` (made if missing, 0700):
    new authority and admission keys, the signed definition (``options`` go
    to :func:`~phantom.network.definition.make_definition`: domain, ipv4,
    ipv6, directory, rendezvous, relays, cert_lifetime), an admin token and
    an empty ledger.  Refuses a directory that already holds a network."""
    path = Path(path)
    if (path / DEFINITION).exists() or (path / AUTHORITY_KEY).exists():
        raise AuthorityError("%s already holds a network (%s): use another --dir"
                             % (path, path / DEFINITION))
    authority = SigningKey.generate()
    admission = SigningKey.generate()
    definition = make_definition(authority, name, now,
                                 admission=[(admission.public, int(now) + admission_lifetime)],
                                 **options)            # checks every value before a file is made
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    save_key(path / AUTHORITY_KEY, authority)
    save_key(path / ADMISSION_KEY, admission)
    atomic_write(path / ADMIN_TOKEN, (b64url(crypto.random_bytes(32)) + "\n").encode("ascii"))
    atomic_write(path / LEDGER, canonical(MemoryLedger().to_doc()))
    atomic_write(path / DEFINITION, definition.encode() + b"\n", mode=0o644)
    return AuthorityDir.open(path)


class AuthorityDir:
    """An opened state directory: the verified definition and the admission key."""

    def __init__(self, path: Path, definition: Definition, admission: SigningKey):
        self.path = path
        self.definition = definition
        self.admission = admission

    @classmethod
    def open(cls, path: Any, now: Optional[float] = None) -> "AuthorityDir":
        """Open ``path``: network.json must verify (and be signed by
        authority.key when that file is still here) and list admission.key."""
        path = Path(path)
        if not (path / DEFINITION).exists():
            raise AuthorityError("%s holds no network (no %s): run `phantom network init NAME "
                                 "--dir %s` first" % (path, DEFINITION, path))
        definition = parse_definition(read_limited(path / DEFINITION, MAX_DEFINITION_SIZE))
        if (path / AUTHORITY_KEY).exists():
            authority = load_key(path / AUTHORITY_KEY)
            if authority.public != definition.authority:
                raise AuthorityError("%s is not the authority key of %s"
                                     % (path / AUTHORITY_KEY, path / DEFINITION))
        admission = load_key(path / ADMISSION_KEY)
        if not any(a.key == admission.public for a in definition.admission):
            raise AuthorityError("%s is not an admission key of network %s"
                                 % (path / ADMISSION_KEY, definition.name))
        return cls(path, definition, admission)

    def files(self) -> dict:
        """{file name: mode} of the files present."""
        out = {}
        for name in (AUTHORITY_KEY, ADMISSION_KEY, DEFINITION, ADMIN_TOKEN, LEDGER):
            p = self.path / name
            if p.exists():
                out[name] = stat.S_IMODE(p.stat().st_mode)
        return out

    def read_ledger(self) -> MemoryLedger:
        data = read_limited(self.path / LEDGER, MAX_LEDGER_SIZE)
        return MemoryLedger.from_doc(strict_loads(data, MAX_LEDGER_SIZE, "authority ledger"),
                                     self.definition)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MemoryLedger]:
        """The ledger under an exclusive lock; written back if the block succeeds."""
        fd = os.open(str(self.path / LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            ledger = self.read_ledger()
            yield ledger
            atomic_write(self.path / LEDGER, canonical(ledger.to_doc()))
        finally:
            os.close(fd)                  # releases the lock
