"""X25519 key handling: generation, base64 text form, and private key files.

Keys are the 32-byte X25519 values, written as standard base64 (44
characters), exactly like ``wg genkey | wg pubkey``.

Private key hygiene:

* key files are created with mode 0600 atomically: the key is written to a
  fresh ``O_EXCL`` temporary file in the same directory that is 0600 from its
  first instant, then hard-linked into place, so the file is never visible
  half-written nor with wider permissions;
* :func:`load_private_key` refuses a file that group or others can access, or
  that is owned by someone other than the current user or root, and says why;
* private keys are returned as ``bytearray`` so their owner can wipe them with
  :func:`phantom.crypto.memzero`; every loaded key is registered with
  :mod:`phantom.logsetup` so that it is redacted should it reach a log line.
"""

from __future__ import annotations

import base64
import binascii
import os
import pwd
import stat
from pathlib import Path

from phantom import crypto, logsetup
from phantom.errors import ConfigError

KEY_SIZE = 32
KEY_TEXT_SIZE = 44  # base64 of 32 bytes, with one "=" of padding


class KeyFormatError(ValueError):
    """A key's text form is not base64 of 32 bytes."""


class KeyFileError(ConfigError):
    """A private key file is missing, unreadable or unsafe.

    A :class:`ConfigError`, so ``phantomd`` reports it and exits with code 2.
    """

    def __init__(self, path, problem: str, key: str = "private_key_file"):
        super().__init__(key, "%s: %s" % (path, problem))
        self.path = str(path)


# --- text form ---------------------------------------------------------------------------
def encode_key(key) -> str:
    return base64.b64encode(bytes(key)).decode("ascii")


def _decode(text, what: str) -> bytes:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise KeyFormatError("%s is not base64 text" % what) from None
    if not isinstance(text, str):
        raise KeyFormatError("%s must be a base64 string, not %s" % (what, type(text).__name__))
    text = text.strip()
    if not text:
        raise KeyFormatError("%s is empty" % what)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("%s is not valid base64 (expected 44 characters like the output "
                             "of `phantom genkey`)" % what) from None
    if len(raw) != KEY_SIZE:
        raise KeyFormatError("%s decodes to %d bytes; an X25519 key is %d bytes (44 base64 "
                             "characters)" % (what, len(raw), KEY_SIZE))
    return raw


def decode_public_key(text) -> bytes:
    """Parse a base64 public key; raise KeyFormatError with a readable reason."""
    raw = _decode(text, "public key")
    if not any(raw):
        raise KeyFormatError("public key is all zeros")
    if crypto.is_small_order(raw):
        raise KeyFormatError("public key is a small-order Curve25519 point: a shared secret "
                             "with it would be predictable")
    return raw


def decode_private_key(text) -> bytearray:
    """Parse a base64 private key into a bytearray (wipe it when done)."""
    key = bytearray(_decode(text, "private key"))
    if not any(key):
        raise KeyFormatError("private key is all zeros")
    logsetup.register_secret(key)
    return key


def public_key(private) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    if len(private) != KEY_SIZE:
        raise KeyFormatError("private key must be %d bytes" % KEY_SIZE)
    return crypto.x25519_public(private)


def genkey() -> str:
    """A new private key in base64, like ``wg genkey``."""
    key = bytearray(crypto.x25519_private())
    try:
        logsetup.register_secret(key)
        return encode_key(key)
    finally:
        crypto.memzero(key)


def pubkey(private_text) -> str:
    """The base64 public key for a base64 private key, like ``wg pubkey``."""
    key = decode_private_key(private_text)
    try:
        return encode_key(public_key(key))
    finally:
        crypto.memzero(key)


# --- files ----------------------------------------------------------------------------------
def write_secret_file(path, data: bytes | bytearray, *, overwrite: bool = False) -> None:
    """Create ``path`` with mode 0600 holding ``data``, atomically.

    The data goes to an O_EXCL temporary file that is 0600 from creation (and
    fchmod'ed, whatever the umask), is fsync'ed, and is then linked into place.
    Without ``overwrite`` an existing file is never replaced (FileExistsError).
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    tmp = directory / (".%s.%d.%s.tmp" % (path.name, os.getpid(), os.urandom(4).hex()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)      # fails with FileExistsError, never clobbers
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def write_private_key(path, key=None, *, overwrite: bool = False) -> bytearray:
    """Write a private key file (base64 + newline, mode 0600) and return the key.

    With ``key=None`` a fresh key is generated.  The caller owns the returned
    bytearray and should wipe it when done.
    """
    key = bytearray(crypto.x25519_private()) if key is None else bytearray(key)
    if len(key) != KEY_SIZE:
        raise KeyFormatError("private key must be %d bytes" % KEY_SIZE)
    logsetup.register_secret(key)
    text = bytearray(base64.b64encode(key)) + b"\n"
    try:
        write_secret_file(path, text, overwrite=overwrite)
    finally:
        crypto.memzero(text)
    return key


def _owner_name(uid: int) -> str:
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid)
    except KeyError:
        return "uid %d" % uid


def check_secret_file(fd: int, path, kind: str = "private key file") -> os.stat_result:
    """Refuse a secret file that is not ours, not regular, or not private.

    Raises KeyFileError explaining the problem and how to fix it.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(path, "%s is not a regular file" % kind)
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        raise KeyFileError(path, "%s is owned by %s, not by %s or root; refusing to trust it "
                           "(chown it to the user that runs phantom)"
                           % (kind, _owner_name(st.st_uid), _owner_name(euid)))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        who = []
        if mode & 0o070:
            who.append("group")
        if mode & 0o007:
            who.append("others")
        verbs = []
        if mode & 0o044:
            verbs.append("readable")
        if mode & 0o022:
            verbs.append("writable")
        if mode & 0o011:
            verbs.append("executable")
        raise KeyFileError(path, "%s has mode %04o: it is %s by %s, so anyone in that set "
                           "could copy the key; run: chmod 600 %s"
                           % (kind, mode, "/".join(verbs), " and ".join(who), path))
    return st


def load_private_key(path) -> bytearray:
    """Read a private key file written by ``phantom genkey`` or ``wg genkey``.

    Refuses files readable (or writable) by group or others, and files owned by
    another user than the effective user or root.  Returns a bytearray.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(path, "no such file (create one with: phantom genkey > %s, "
                           "or `phantom genkey --out %s`)" % (path, path)) from None
    except OSError as exc:
        raise KeyFileError(path, "cannot open: %s" % (exc.strerror or exc)) from None
    buf = bytearray(256)
    try:
        check_secret_file(fd, path)
        n = os.readv(fd, [buf])
        if n >= len(buf):
            raise KeyFileError(path, "too long to be a key file (expected one base64 line)")
        try:
            return decode_private_key(bytes(buf[:n]))
        except KeyFormatError as exc:
            raise KeyFileError(path, str(exc)) from None
    finally:
        crypto.memzero(buf)
        os.close(fd)


def load_or_create_private_key(path) -> bytearray:
    """Load ``path``, creating a fresh key there (and its directory, 0700) if absent."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            key = write_private_key(path)
        except FileExistsError:
            pass                      # another process won the race: load theirs
        else:
            return key
    return load_private_key(path)
