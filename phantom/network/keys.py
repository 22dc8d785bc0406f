"""The network's keys: Ed25519 through libsodium (PyNaCl), the fingerprint,
domain-separated signatures, key files and atomic writes.

* The **authority key** signs the network definition and nothing else; it can
  live offline.  The network is named by its **fingerprint**: base32
  (lowercase, no padding) of the first 20 bytes of
  ``BLAKE2b-256(b"phantom-network-authority-v1" || authority public key)``,
  32 characters.
* An **admission key** (listed, with an expiry, in the definition) signs
  certificates, removals and policies day to day; the directory holds one.
* A signature is Ed25519 over ``DOMAIN || canonical JSON of the document
  minus "sig"``; each kind of document has its own domain, so a signature
  over one kind never verifies as another.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path
from typing import Callable

import nacl.bindings as _nb
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey as _SigningKey, VerifyKey as _VerifyKey

from phantom import crypto

from .canonical import KEY_SIZE, SIG_SIZE, b64, bytes_field, signed_bytes
from .errors import FormatError

FINGERPRINT_LABEL = b"phantom-network-authority-v1"
FINGERPRINT_BYTES = 20
FINGERPRINT_LEN = 32                  # base32 of 20 bytes, no padding
_B32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")

DEFINITION_DOMAIN = b"phantom-network-definition-v1\n"
CERTIFICATE_DOMAIN = b"phantom-network-certificate-v1\n"
REMOVAL_DOMAIN = b"phantom-network-removal-v1\n"
POLICY_DOMAIN = b"phantom-network-policy-v1\n"
KEY_FILE_HEADER = "phantom-network-key-v1"


class SigningKey:
    """An Ed25519 key pair (libsodium).  ``public`` is the 32-byte public key."""

    __slots__ = ("_key", "public")

    def __init__(self, seed: bytes):
        seed = bytes(seed)
        if len(seed) != KEY_SIZE:
            raise ValueError("an Ed25519 seed is %d bytes" % KEY_SIZE)
        self._key = _SigningKey(seed)
        self.public = bytes(self._key.verify_key)

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(crypto.random_bytes(KEY_SIZE))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return self._key.sign(bytes(domain) + bytes(message)).signature

    def __repr__(self) -> str:                   # never the secret
        return "SigningKey(public=%s)" % b64(self.public)


def verify(public: bytes, domain: bytes, message: bytes, sig: bytes) -> bool:
    """True when ``sig`` is ``public``'s Ed25519 signature over domain || message."""
    if len(public) != KEY_SIZE or len(sig) != SIG_SIZE:
        return False
    try:
        _VerifyKey(bytes(public)).verify(bytes(domain) + bytes(message), bytes(sig))
    except (BadSignatureError, ValueError, TypeError):
        return False
    except Exception:          # libsodium refusing the key: a failed verification
        return False
    return True


def sign_document(key: SigningKey, domain: bytes, body: dict) -> dict:
    """``body`` with its ``sig``: ``key``'s signature over ``domain`` ||
    canonical(body minus "sig") (every network document is signed so)."""
    doc = dict(body)
    doc["sig"] = b64(key.sign(domain, signed_bytes(body)))
    return doc


def verify_document(public: bytes, domain: bytes, doc: dict, sig: bytes) -> bool:
    """True when ``sig`` is ``public``'s signature of ``doc`` under ``domain``
    (the counterpart of :func:`sign_document`)."""
    return verify(public, domain, signed_bytes(doc), sig)


def key_field(value, path: str, valid: Callable[[bytes], bool], problem: str) -> bytes:
    """A 32-byte public key field (canonical base64) that ``valid`` accepts;
    else FormatError(``problem``, ``path``)."""
    key = bytes_field(value, path, KEY_SIZE)
    if not valid(key):
        raise FormatError(problem, path)
    return key


def valid_ed25519(public: bytes) -> bool:
    """A usable Ed25519 public key: on the curve, in the prime-order subgroup,
    not of small order (libsodium's check)."""
    try:
        return len(public) == KEY_SIZE and bool(_nb.crypto_core_ed25519_is_valid_point(
            bytes(public)))
    except Exception:
        return False


def valid_x25519(public: bytes) -> bool:
    """A usable X25519 public key (32 bytes, not of small order)."""
    return len(public) == KEY_SIZE and not crypto.is_small_order(bytes(public))


def fingerprint(authority: bytes) -> str:
    """The network's name in tokens and documents: 32 lowercase base32 characters."""
    digest = crypto.blake2b(FINGERPRINT_LABEL + bytes(authority), digest_size=32)
    return base64.b32encode(digest[:FINGERPRINT_BYTES]).decode("ascii").lower()


def fingerprint_field(value, path: str = "net") -> str:
    if not isinstance(value, str) or len(value) != FINGERPRINT_LEN or not set(value) <= _B32:
        raise FormatError("must be a network fingerprint (%d characters a-z, 2-7)"
                          % FINGERPRINT_LEN, path)
    return value


# --- files -------------------------------------------------------------------------------------

def atomic_write(path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole
    new one, never a part: a temporary file in the same directory, fsync,
    rename, fsync of the directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=str(path.parent))
    try:
        os.fchmod(fd, mode)
        view = memoryview(bytes(data))
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        tmp = None
        dfd = os.open(str(path.parent), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def read_limited(path, max_size: int) -> bytes:
    """A file's bytes, refusing one larger than ``max_size`` (FormatError)."""
    with open(path, "rb") as f:
        data = f.read(max_size + 1)
    if len(data) > max_size:
        raise FormatError("%s is larger than %d bytes" % (path, max_size))
    return data


def save_key(path, key: SigningKey) -> None:
    """Write a secret key file (mode 0600): a header line, the base64 seed."""
    atomic_write(path, ("%s\n%s\n" % (KEY_FILE_HEADER, b64(key.seed))).encode("ascii"))


def load_key(path) -> SigningKey:
    """Read a key file written by :func:`save_key` (FormatError if it is not one)."""
    text = read_limited(path, 1024).decode("ascii", "replace").split()
    if len(text) != 2 or text[0] != KEY_FILE_HEADER:
        raise FormatError("%s is not a phantom network key file" % path)
    try:
        seed = base64.b64decode(text[1], validate=True)
    except ValueError:
        raise FormatError("%s: the key is not base64" % path) from None
    if len(seed) != KEY_SIZE:
        raise FormatError("%s: the key is not %d bytes" % (path, KEY_SIZE))
    return SigningKey(seed)
