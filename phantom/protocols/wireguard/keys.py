"""WireGuard preshared keys: ``preshared_key_file`` (the output of ``wg genpsk``).

A preshared key is 32 random bytes in base64, one line, like a private key,
and kept as carefully: the file must be the user's (or root's) and mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from ... import crypto
from ...control.keys import KeyFileError, check_secret_file

KEY_SIZE = 32


def genpsk() -> str:
    """A new preshared key as base64 text, like ``wg genpsk``."""
    return base64.b64encode(crypto.random_bytes(KEY_SIZE)).decode("ascii")


def decode_preshared_key(text) -> bytearray:
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("ascii", "replace")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a preshared key is base64 of 32 bytes (make one with `wg genpsk`)") from None
    if len(raw) != KEY_SIZE:
        raise ValueError("a preshared key decodes to %d bytes, not %d" % (len(raw), KEY_SIZE))
    return bytearray(raw)


def load_preshared_key(path, key: str = "preshared_key_file") -> bytearray:
    """Read a preshared key file; refuses files others can read, like a private key."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(path, "no such file (make one with: wg genpsk > %s; chmod 600 %s)"
                           % (path, path), key) from None
    except OSError as exc:
        raise KeyFileError(path, "cannot open: %s" % (exc.strerror or exc), key) from None
    buf = bytearray(256)
    try:
        try:
            check_secret_file(fd, path, "preshared key file")
        except KeyFileError as exc:            # name our setting, not private_key_file
            exc.key = key                      # the same problem, under our setting's name
            exc.args = ("%s: %s" % (key, exc.problem),)
            raise
        n = os.readv(fd, [buf])
        if n >= len(buf):
            raise KeyFileError(path, "too long to be a preshared key file", key)
        try:
            return decode_preshared_key(bytes(buf[:n]).decode("ascii", "replace"))
        except ValueError as exc:
            raise KeyFileError(path, str(exc), key) from None
    finally:
        crypto.memzero(buf)
        os.close(fd)
