"""Canonical JSON and strict field checks, shared by every network document.

Canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)``: the same rule as the directory's
records (phantom's directory/records.py), kept here as a small helper of the
network package's own so the package depends on nothing that is moving.

A document is signed over ``DOMAIN || canonical(document minus "sig")``.
Parsing is strict: no duplicate keys, no floats, no NaN/Infinity, bounded
size, nesting and integer length, and every string field must already be in
its canonical form (addresses as :mod:`ipaddress` prints them, keys in
canonical base64), so the bytes a verifier re-derives are the bytes that were
signed and one value has one encoding.
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
from typing import Any, Iterable

from .errors import FormatError

MAX_DEPTH = 8                 # every network document is flat; JSON nests at most this deep
MAX_INT_DIGITS = 20           # 2**64 has 20 digits: longer integers are refused before int()
KEY_SIZE = 32
SIG_SIZE = 64


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def signed_bytes(doc: dict) -> bytes:
    """What a document's signature covers (after its kind's domain): the
    canonical bytes of the document minus ``sig``.  keys.sign_document and
    keys.verify_document sign and check over it."""
    return canonical({k: v for k, v in doc.items() if k != "sig"})


def _pairs(items):
    out = {}
    for k, v in items:
        if k in out:
            raise ValueError("duplicate key %r" % (k,))
        out[k] = v
    return out


def _no_float(text):
    raise ValueError("numbers must be integers, not %s" % text[:24])


def _no_const(text):
    raise ValueError("%s is not allowed" % text)


# json.loads's keywords that refuse duplicate keys, floats and NaN/Infinity
# (a directory record is parsed with them too: phantom.directory.records)
STRICT_HOOKS = {"object_pairs_hook": _pairs, "parse_float": _no_float, "parse_constant": _no_const}


def _int(text):
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("integer with %d digits is too long" % len(text))
    return int(text)


def strict_decoder() -> json.JSONDecoder:
    """A decoder refusing what :func:`strict_loads` refuses: duplicate keys,
    floats, NaN/Infinity, integers over 20 digits (for a caller that needs
    the decoder itself, e.g. to note where each object starts)."""
    return json.JSONDecoder(**STRICT_HOOKS, parse_int=_int)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed value (iterative; stops past ``limit``)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def strict_loads(raw: Any, max_size: int, what: str = "document") -> Any:
    """Parse JSON text or UTF-8 bytes strictly; raise FormatError saying why not.

    Refuses: more than ``max_size`` bytes, invalid UTF-8, duplicate keys,
    floats, NaN/Infinity, integers over 20 digits, nesting deeper than
    MAX_DEPTH, trailing garbage."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        if len(raw) > max_size:
            raise FormatError("%d bytes; at most %d" % (len(raw), max_size), what=what)
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError("not UTF-8 (byte %d)" % exc.start, what=what) from None
    elif isinstance(raw, str):
        if len(raw) > max_size:          # characters <= bytes: a fair first bound
            raise FormatError("%d characters; at most %d" % (len(raw), max_size), what=what)
        if len(raw.encode("utf-8", "surrogatepass")) > max_size:
            raise FormatError("more than %d bytes" % max_size, what=what)
    else:
        raise FormatError("expected JSON text, got %s" % type(raw).__name__, what=what)
    try:
        value = json.loads(raw, **STRICT_HOOKS, parse_int=_int)
    except RecursionError:
        raise FormatError("JSON nested too deeply", what=what) from None
    except ValueError as exc:          # JSONDecodeError and the hooks' errors
        raise FormatError("not valid JSON: %s" % exc, what=what) from None
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise FormatError("JSON nested deeper than %d" % MAX_DEPTH, what=what)
    return value


def b64(data: bytes) -> str:
    """Standard base64 with padding: the form of every key and signature."""
    return base64.b64encode(bytes(data)).decode("ascii")


def b64url(data: bytes) -> str:
    """URL-safe base64 without padding (invite tokens)."""
    return base64.urlsafe_b64encode(bytes(data)).decode("ascii").rstrip("=")


def from_b64url(text: str) -> bytes:
    """Decode URL-safe base64 without padding; raise ValueError on anything else."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url")
    if any(c in "+/=" or c.isspace() for c in text):
        raise ValueError("not base64url")
    pad = "=" * (-len(text) % 4)
    if len(text) % 4 == 1:
        raise ValueError("truncated base64url")
    try:
        raw = base64.urlsafe_b64decode(text + pad)
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if b64url(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


# --- field checks: each raises FormatError(problem, path) ---------------------------------------

def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def version_field(value: Any, version: int, path: str = "v") -> int:
    """A document's format version: exactly the integer ``version``."""
    if not (is_int(value) and value == version):
        raise FormatError("version %r is not supported (this is version %d)" % (value, version),
                          path)
    return value


def int_field(value: Any, path: str, lo: int, hi: int) -> int:
    if not is_int(value) or not lo <= value <= hi:
        raise FormatError("must be an integer in %d..%d" % (lo, hi), path)
    return value


def bool_field(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise FormatError("must be true or false", path)
    return value


def bytes_field(value: Any, path: str, size: int) -> bytes:
    """``size`` bytes written in canonical standard base64."""
    if not isinstance(value, str) or len(value) > 4 * size or not value.isascii():
        raise FormatError("must be %d bytes in base64" % size, path)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError("is not valid base64", path) from None
    if len(raw) != size or b64(raw) != value:
        raise FormatError("must be %d bytes in canonical base64" % size, path)
    return raw


def list_field(value: Any, path: str, max_items: int, min_items: int = 0) -> list:
    if not isinstance(value, list):
        raise FormatError("must be a list", path)
    if not min_items <= len(value) <= max_items:
        raise FormatError("must have %d to %d items, not %d" % (min_items, max_items, len(value)),
                          path)
    return value


def object_fields(doc: Any, required: Iterable[str], optional: Iterable[str] = (),
                  path: str = "") -> dict:
    """A JSON object with exactly the ``required`` keys plus any of ``optional``."""
    if not isinstance(doc, dict):
        raise FormatError("must be a JSON object", path)
    required = frozenset(required)
    known = required | frozenset(optional)
    missing = required - set(doc)
    if missing:
        raise FormatError("lacks field(s): %s" % ", ".join(sorted(missing)), path)
    unknown = set(doc) - known
    if unknown:
        shown = ", ".join(sorted(_printable(k) for k in unknown)[:5])
        raise FormatError("unknown field(s): %s" % shown, path)
    return doc


def _printable(s: Any) -> str:
    return ascii(s) if not isinstance(s, str) or not s.isprintable() or not s.isascii() else s


def describe_char(ch: str) -> str:
    """A character as a user can read it: 'x', or U+200B (ZERO WIDTH SPACE)."""
    if ch.isascii() and ch.isprintable() and not ch.isspace():
        return repr(ch)
    name = unicodedata.name(ch, "")
    return "U+%04X%s" % (ord(ch), (" (%s)" % name) if name else "")


def text_field(value: Any, path: str, max_len: int) -> str:
    """Free text (a comment): printable, no control, format or surrogate
    characters (no bidirectional overrides, no zero-width tricks)."""
    if not isinstance(value, str):
        raise FormatError("must be a string", path)
    if len(value) > max_len:
        raise FormatError("is %d characters; at most %d" % (len(value), max_len), path)
    for ch in value:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise FormatError("contains %s" % describe_char(ch), path)
    return value


TIME_MAX = 2 ** 36 - 1        # unix seconds, year 4147: 11 digits at most
SEQ_MAX = 2 ** 53 - 1         # seq and serial numbers: exact in every JSON reader
