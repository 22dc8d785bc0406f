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

Private keys never reach the output.  :func:`register_secret` records a
keyed hash of each private key (the key itself is not kept); every formatted
line is scanned for base64 or hex tokens of key length, and a token whose
hash matches is replaced by ``[redacted]``.  Raw ``bytes``/``bytearray``
arguments of key length are never formatted either.  The HTTP API runs its
responses through :func:`redact` as well.
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
_secret_digests: set[bytes] = set()
# Candidate key renderings: standard/URL-safe base64 of 32 bytes, and hex.
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])(?:[A-Za-z0-9+/_-]{43}=|[0-9a-fA-F]{64})(?![A-Za-z0-9+/=_-])")
REDACTED = "[redacted]"


def _digest(raw: bytes | bytearray) -> bytes:
    return hashlib.blake2b(bytes(raw), key=_SECRET_SALT, digest_size=16).digest()


def register_secret(key: bytes | bytearray) -> None:
    """Remember (a keyed hash of) a private key so that logs and API output redact it."""
    if len(key):
        _secret_digests.add(_digest(key))


def _token_bytes(token: str) -> bytes | None:
    try:
        if len(token) == 64:
            return binascii.unhexlify(token)
        return base64.b64decode(token.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None


def redact(text: str) -> str:
    """Replace every registered secret (as base64 or hex) in ``text``."""
    if not _secret_digests or not text:
        return text

    def sub(m: re.Match) -> str:
        raw = _token_bytes(m.group(0))
        if raw is not None and _digest(raw) in _secret_digests:
            return REDACTED
        return m.group(0)

    return _TOKEN.sub(sub, text)


def _safe_arg(arg):
    # A 32-byte buffer in a log call is most likely key material: never print it.
    if isinstance(arg, (bytes, bytearray, memoryview)) and len(arg) == 32:
        return "<32 bytes>"
    return arg


class OneLineFormatter(logging.Formatter):
    """time level component [peer=name]: message -- always a single line."""

    def __init__(self):
        super().__init__()

    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging API)
        t = time.gmtime(record.created)
        return "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", t), int(record.msecs))

    def format(self, record: logging.LogRecord) -> str:
        if record.args:
            if isinstance(record.args, dict):
                record.args = {k: _safe_arg(v) for k, v in record.args.items()}
            else:
                record.args = tuple(_safe_arg(a) for a in record.args)
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not lose the event
            message = "%r %% %r (format error: %s)" % (record.msg, record.args, exc)
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
            exc_type, exc, _ = record.exc_info
            line += " [%s: %s]" % (exc_type.__name__, exc)
            if record.levelno <= logging.DEBUG or logging.getLogger(ROOT).isEnabledFor(logging.DEBUG):
                tb = self.formatException(record.exc_info)
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
