"""Logging for phantomd: one line per event.

Format::

    2024-05-01T12:00:00.123Z INFO    handshake peer=alice: session established

i.e. UTC time, level, component (the logger name below ``phantom.``), an
optional ``peer=<name>``, then the message.  Messages and exceptions are
folded onto the one line.

Use :func:`get_logger` for a component and :func:`peer_logger` for messages
about one peer::

    log = get_logger("handshake")
    peer_logger(log, "alice").info("session established")

Secrets never reach the output.  :func:`register_secret` records a keyed
hash of each secret (the private key, the API token; the secret itself is
not kept).  :func:`redact` looks for them at every offset of every run of
base64/hex characters, so a secret is found in hex (either case) and in
base64 (standard or URL-safe, padded or not, percent-encoded), also when it
is glued to a path, a ``/`` or ``_`` or other text; a match is replaced by
``[redacted]``.  The :class:`RedactingFilter` on phantom's log handler
applies it to every record that reaches the handler (message, arguments,
exception text, stack), whichever logger (phantom's, aiohttp's, asyncio's)
emitted it.  Raw ``bytes``/``bytearray`` arguments of key length are never
formatted either.  The HTTP API runs its responses through :func:`redact` as
well.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import sys
import time

ROOT = "phantom"
LEVELS = ("debug", "info", "warning", "error", "critical")

_SECRET_SALT = os.urandom(32)
# Keyed hashes of the registered secrets, by their length in bytes, and the
# first few characters of their renderings (to find candidates fast; a
# prefix is 24 of a key's 256 bits and never leaves the process).
_secret_digests: dict[int, set[bytes]] = {}
_prefixes: dict[int, set[tuple[str, str]]] = {}      # n -> {(kind, prefix)}
PREFIX = 4
# A run of characters that may hold an encoded secret: the base64 alphabets
# (standard and URL-safe), padding, and the percent-escapes of '+', '/', '='
# (a key in a URL).  Hex digits are a subset.  Secrets are searched at every
# offset inside a run, so a key glued to '/', '_', other base64 text or a
# path is found too.
_RUN = re.compile(r"(?:[A-Za-z0-9+/_=-]|%(?:2[BbFf]|3[Dd]))+")
_PCT = {"%2B": "+", "%2F": "/", "%3D": "="}
_HEX_RUN = re.compile(r"[0-9a-f]+")
_B64_RUN = re.compile(r"[A-Za-z0-9+/]+")
_TO_STANDARD = str.maketrans("-_", "+/")
REDACTED = "[redacted]"


def _digest(raw: bytes | bytearray) -> bytes:
    return hashlib.blake2b(bytes(raw), key=_SECRET_SALT, digest_size=16).digest()


def register_secret(secret: bytes | bytearray | str) -> None:
    """Remember (a keyed hash of) a secret so that logs and API output redact it.

    ``secret`` is raw bytes (a private key), or text: hex text (the API
    token) is registered as the bytes it encodes, so its hex rendering in
    either case and its base64 renderings are all redacted; other text as
    its UTF-8 bytes.  The secret itself is not kept.
    """
    if isinstance(secret, str):
        text = secret.strip()
        try:
            raw = bytes.fromhex(text) if len(text) % 2 == 0 else text.encode()
        except ValueError:
            raw = text.encode("utf-8")
    else:
        raw = bytes(secret)
    if len(raw) < 8:             # shorter "secrets" would redact ordinary words
        return
    n = len(raw)
    _secret_digests.setdefault(n, set()).add(_digest(raw))
    _prefixes.setdefault(n, set()).update(
        {("hex", raw.hex()[:PREFIX]), ("b64", base64.b64encode(raw).decode()[:PREFIX])})


def _b64_len(n: int) -> int:
    return (4 * n + 2) // 3          # unpadded base64 of n bytes


def _matches(chars: str) -> list[tuple[int, int]]:
    """Spans of ``chars`` (one character per position) holding a secret."""
    spans = []
    lower = chars.lower()
    standard = chars.translate(_TO_STANDARD)
    for n, digests in _secret_digests.items():
        for kind, prefix in _prefixes[n]:
            if kind == "hex":
                text, run_re, w = lower, _HEX_RUN, 2 * n
            else:
                text, run_re, w = standard, _B64_RUN, _b64_len(n)
            i = text.find(prefix)
            while i >= 0:
                m = run_re.match(text, i, i + w)
                if m is not None and m.end() == i + w:
                    piece = text[i:i + w]
                    try:
                        raw = (bytes.fromhex(piece) if kind == "hex" else
                               base64.b64decode(piece + "=" * (-w % 4), validate=True))
                    except (binascii.Error, ValueError):
                        raw = b""
                    if _digest(raw) in digests:
                        end = i + w
                        while kind == "b64" and end < len(chars) and chars[end] == "=":
                            end += 1                # the padding goes too
                        spans.append((i, end))
                i = text.find(prefix, i + 1)
    return spans


def redact(text: str) -> str:
    """Replace every registered secret in ``text`` by ``[redacted]``: in hex
    (either case) or base64 (standard or URL-safe, padded or not, or
    percent-encoded in a URL), also inside longer strings."""
    if not _secret_digests or not text:
        return text
    if not isinstance(text, str):
        text = str(text)
    shortest = min(_b64_len(n) for n in _secret_digests)
    out = []
    last = 0
    for m in _RUN.finditer(text):
        if m.end() - m.start() < shortest:
            continue
        run = m.group(0)
        # One unit per decoded character, with its extent in ``text``.
        if "%" in run:
            chars, starts = [], []
            i = 0
            while i < len(run):
                if run[i] == "%":
                    chars.append(_PCT[run[i:i + 3].upper()])
                    starts.append(i)
                    i += 3
                else:
                    chars.append(run[i])
                    starts.append(i)
                    i += 1
            starts.append(len(run))
            chars = "".join(chars)
        else:
            chars, starts = run, None
        spans = _matches(chars)
        if not spans:
            continue
        spans.sort()
        merged = [list(spans[0])]
        for a, b in spans[1:]:
            if a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        for a, b in merged:
            if starts is not None:
                a, b = starts[a], starts[b]
            out.append(text[last:m.start() + a])
            out.append(REDACTED)
            last = m.start() + b
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _safe_arg(arg):
    # A 32-byte buffer in a log call is most likely key material: never print it.
    if isinstance(arg, (bytes, bytearray, memoryview)) and len(arg) == 32:
        return "<32 bytes>"
    return arg


class RedactingFilter(logging.Filter):
    """Redacts every record that reaches the handler it is attached to.

    The message is formatted (with 32-byte buffers replaced by ``<32 bytes>``)
    and redacted, and so are the exception text and the stack; the record's
    ``args`` are cleared, so no later handler or formatter can format the
    raw values again.  It never drops a record.
    """

    _plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_phantom_redacted", False):
            return True
        if record.args:
            if isinstance(record.args, dict):
                record.args = {k: _safe_arg(v) for k, v in record.args.items()}
            else:
                record.args = tuple(_safe_arg(a) for a in record.args)
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not lose the event
            message = "%r %% %r (format error: %s)" % (record.msg, record.args, exc)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, _ = record.exc_info
            record.exc_summary = redact("%s: %s" % (exc_type.__name__, exc))
            if not record.exc_text:
                record.exc_text = self._plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._phantom_redacted = True
        return True


def install_redaction(handler: logging.Handler) -> logging.Handler:
    """Attach a :class:`RedactingFilter` to ``handler`` (once)."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    return handler


class OneLineFormatter(logging.Formatter):
    """time level component [peer=name]: message -- always a single line."""

    def __init__(self):
        super().__init__()

    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging API)
        t = time.gmtime(record.created)
        return "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", t), int(record.msecs))

    def format(self, record: logging.LogRecord) -> str:
        RedactingFilter().filter(record)     # also when used without the filter
        message = record.getMessage()
        component = record.name
        if component == ROOT:
            component = "main"
        elif component.startswith(ROOT + "."):
            component = component[len(ROOT) + 1:]
        peer = getattr(record, "peer", None)
        head = "%s %-7s %s" % (self.formatTime(record), record.levelname, component)
        if peer is not None:
            head += " peer=%s" % peer
        line = "%s: %s" % (head, message)
        if record.exc_info and record.exc_info[0] is not None:
            line += " [%s]" % record.exc_summary
            if record.levelno <= logging.DEBUG or logging.getLogger(ROOT).isEnabledFor(logging.DEBUG):
                tb = record.exc_text or ""
                line += " traceback: " + " | ".join(s.strip() for s in tb.splitlines() if s.strip())
        elif record.stack_info:
            line += " stack: " + " | ".join(s.strip() for s in record.stack_info.splitlines())
        # One event, one line: escape embedded line breaks.
        line = line.replace("\r", "\\r").replace("\n", "\\n")
        return redact(line)


def parse_level(level) -> int:
    if isinstance(level, int):
        return level
    name = str(level).strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise ValueError("unknown log level %r (choose from %s)" % (level, ", ".join(LEVELS)))
    return getattr(logging, name.upper())


def setup_logging(level="info", stream=None) -> logging.Logger:
    """Send phantom's logs (and warnings from libraries) to ``stream`` (stderr).

    Idempotent: calling it again replaces the handler and the level.
    """
    lvl = parse_level(level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(OneLineFormatter())
    install_redaction(handler)
    handler._phantom = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_phantom", False):
            root.removeHandler(h)
    root.addHandler(handler)
    # Libraries (aiohttp, pyroute2, asyncio) stay at WARNING unless debugging.
    root.setLevel(logging.WARNING if lvl > logging.DEBUG else logging.DEBUG)
    log = logging.getLogger(ROOT)
    log.setLevel(lvl)
    logging.captureWarnings(True)
    return log


def get_logger(component: str) -> logging.Logger:
    """The logger of one component, e.g. ``get_logger("handshake")``."""
    return logging.getLogger("%s.%s" % (ROOT, component) if component else ROOT)


class PeerAdapter(logging.LoggerAdapter):
    """Adds ``peer=<name>`` to every line it logs."""

    def process(self, msg, kwargs):
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("peer", self.extra["peer"])
        kwargs["extra"] = extra
        return msg, kwargs


def peer_logger(logger: logging.Logger | str, peer: str) -> PeerAdapter:
    """A logger whose lines name ``peer``."""
    if isinstance(logger, str):
        logger = get_logger(logger)
    return PeerAdapter(logger, {"peer": peer})
