"""phantomd's side of the privileged helper: start it, ask it, stop it.

:func:`spawn` runs ``python -m phantom.privsep.helper`` (a fresh
interpreter: none of the daemon's memory, keys included, is copied into
the privileged process) with one end of a ``SOCK_SEQPACKET`` socket pair
and nothing else (``close_fds``, stdin from /dev/null), sends it the
:class:`~phantom.privsep.protocol.Allowlist` and waits until it has
confined itself and removed what a killed predecessor left.  It must run
while phantomd is still root and single-threaded (before
:func:`phantom.privileges.lock_down`); it starts no thread.

:class:`PrivClient` is the API later work calls (routes, rules, nftables,
forwarding, systemd-resolved); each call returns the helper's reply or
raises :class:`PrivError` with the helper's words, never pretends.
Calls block for at most their timeout (a few milliseconds normally).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from .protocol import MAX_REPLY, Allowlist, encode_request

log = logging.getLogger("phantom.privsep")

START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class PrivError(OSError):
    """The helper said no (``refused``: a REASONS value; ``errno``: the
    kernel's), or it is gone."""

    def __init__(self, text: str, errno: Optional[int] = None, refused: Optional[str] = None,
                 reply: Optional[dict] = None):
        super().__init__(errno or 0, text)
        self.text = text
        self.refused = refused
        self.reply = reply or {}

    def __str__(self) -> str:
        return self.text


class PrivClient:
    def __init__(self, sock: socket.socket, proc: Optional[subprocess.Popen] = None):
        self.sock = sock
        self.proc = proc
        self._next = 0
        self._lock = threading.Lock()
        self._gone: Optional[str] = None
        self.ready: dict = {}

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    # --- the channel ------------------------------------------------------------------------------
    def _exit_text(self) -> str:
        if self.proc is None:
            return "its socket closed"
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "its socket closed"
        return "exit status %d" % code if code >= 0 else "killed by signal %d" % -code

    def _recv(self, deadline: float, what: str) -> dict:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PrivError("the privileged helper did not answer %s in time" % what)
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(MAX_REPLY)
            except socket.timeout:
                continue
            except OSError as exc:
                self._gone = "its socket failed: %s" % exc
                raise PrivError("the privileged helper is gone (%s)" % self._gone) from None
            if not data:
                self._gone = self._exit_text()
                raise PrivError("the privileged helper is gone (%s)" % self._gone)
            try:
                reply = json.loads(data)
            except ValueError:
                raise PrivError("the privileged helper answered something that is not JSON") from None
            if isinstance(reply, dict):
                return reply

    def request(self, op: str, timeout: float = REQUEST_TIMEOUT, **fields) -> dict:
        """Send one request and return the helper's ``ok`` reply; PrivError otherwise."""
        with self._lock:
            if self._gone is not None:
                raise PrivError("the privileged helper is gone (%s)" % self._gone)
            self._next += 1
            rid = self._next
            data = encode_request(rid, op, **fields)
            try:
                self.sock.settimeout(timeout)
                self.sock.send(data)
            except OSError as exc:
                self._gone = self._exit_text() if not isinstance(exc, socket.timeout) else "send timed out"
                raise PrivError("the privileged helper is gone (%s)" % self._gone) from None
            deadline = time.monotonic() + timeout
            while True:
                reply = self._recv(deadline, op)
                if reply.get("id") == rid:
                    break                       # older ids: answers to requests that timed out
        if reply.get("ok") is True:
            return reply
        raise PrivError(str(reply.get("error") or "refused"), reply.get("errno"), reply.get("refused"), reply)

    def start(self, allow: Allowlist, timeout: float = START_TIMEOUT) -> dict:
        """Send the allowlist (the first message) and wait for the helper to be ready."""
        self.sock.settimeout(timeout)
        self.sock.send(json.dumps(allow.to_json()).encode())
        reply = self._recv(time.monotonic() + timeout, "its start")
        if reply.get("ready") is not True:
            raise PrivError("the privileged helper did not start: %s" % (reply.get("error") or reply))
        self.ready = reply
        if reply.get("recovered"):
            log.warning("privileged helper: removed %d leftover(s) of a previous run that did not stop "
                        "cleanly: %s", len(reply["recovered"]), "; ".join(reply["recovered"][:20]))
        return reply

    def close(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """Close the channel: the helper removes everything it installed and
        exits.  Waits up to ``timeout`` for it; returns its exit status."""
        with self._lock:
            if self._gone is None:
                self._gone = "closed by the daemon"
            try:
                self.sock.close()
            except OSError:
                pass
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("the privileged helper (pid %d) is still removing routes after %.0f s",
                        self.proc.pid, timeout)
            return None

    # --- the API ----------------------------------------------------------------------------------
    def status(self) -> dict:
        return self.request("status")

    def link_up(self, addrgenmode_none: bool = False) -> dict:
        return self.request("link_up", addrgenmode_none=addrgenmode_none)

    def add_address(self, address) -> dict:
        return self.request("addr_add", address=str(address))

    def add_route(self, prefix, table="main") -> dict:
        return self.request("route_add", prefix=str(prefix), table=table)

    def del_route(self, prefix, table="main") -> dict:
        return self.request("route_del", prefix=str(prefix), table=table)

    def add_rule(self, family: int, priority: int, table, fwmark: Optional[int] = None,
                 invert: bool = False, suppress_prefixlength: Optional[int] = None) -> dict:
        return self.request("rule_add", **_rule(family, priority, table, fwmark, invert, suppress_prefixlength))

    def del_rule(self, family: int, priority: int, table, fwmark: Optional[int] = None,
                 invert: bool = False, suppress_prefixlength: Optional[int] = None) -> dict:
        return self.request("rule_del", **_rule(family, priority, table, fwmark, invert, suppress_prefixlength))

    def nft_replace(self, table_spec: dict, name: Optional[str] = None) -> dict:
        """Replace one of the daemon's tables (``inet phantom-<device>`` by
        default, or ``phantom-killswitch``; see nftspec) in one transaction."""
        return self.request("nft_replace", table=table_spec, **({"name": name} if name else {}))

    def nft_delete(self, name: Optional[str] = None) -> dict:
        return self.request("nft_delete", **({"name": name} if name else {}))

    def shutdown(self) -> dict:
        """Say this is a clean stop (the kill switch goes too), before close()."""
        return self.request("shutdown")

    def set_forwarding(self, family: int, enabled: bool) -> dict:
        return self.request("forwarding", family=family, enabled=enabled)

    def resolved_register(self, dns: Sequence, domains: Sequence = (), default_route: bool = False) -> dict:
        """``dns`` for our device; ``default_route``: the device is systemd-resolved's
        default route (an exit in use: ``domains = ["~."]`` sends it every query)."""
        return self.request("resolved_register", dns=[str(d) for d in dns], domains=list(domains),
                            default_route=default_route)

    def resolved_revert(self) -> dict:
        return self.request("resolved_revert")


def _rule(family, priority, table, fwmark, invert, suppress) -> dict:
    out = {"family": family, "priority": priority, "table": table}
    if fwmark is not None:
        out["fwmark"] = fwmark
    if invert:
        out["invert"] = True
    if suppress is not None:
        out["suppress_prefixlength"] = suppress
    return out


def helper_command() -> list:
    """``python -P -m phantom.privsep.helper``: -P keeps the working directory
    out of sys.path (the helper starts as root); the package comes from where
    this phantom is (PYTHONPATH, :func:`_environment`)."""
    return [sys.executable, "-P", "-m", "phantom.privsep.helper"]


def _environment() -> dict:
    import phantom
    root = str(Path(phantom.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def spawn(allow: Allowlist, prefix: Sequence[str] = (), timeout: float = START_TIMEOUT) -> PrivClient:
    """Start the helper (see the module's text) and return a ready client.
    ``prefix``: an argv prefix (``ip netns exec NS`` in tests)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen([*prefix, *helper_command(), "--fd", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                                cwd="/", env=_environment())
    except OSError as exc:
        mine.close()
        raise PrivError("cannot start the privileged helper: %s" % (exc.strerror or exc)) from None
    finally:
        theirs.close()
    client = PrivClient(mine, proc)
    try:
        client.start(allow, timeout)
    except BaseException:
        client.close(timeout=5.0)
        raise
    log.info("privileged helper pid %d ready: %s", proc.pid, ", ".join(
        "%s %s" % kv for kv in sorted(client.ready.get("sandbox", {}).items())))
    return client
