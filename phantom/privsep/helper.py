"""The privileged helper process: ``python -P -m phantom.privsep.helper --fd N``.

Started by phantomd (:func:`phantom.privsep.client.spawn`) while phantomd is
still root.  In order:

1. reads its :class:`~phantom.privsep.protocol.Allowlist` (the first
   message on the socket pair, sent before phantomd reads anything from the
   network), opens its journal in the state directory;
2. imports and opens all it needs, then confines itself
   (:func:`phantom.privsep.sandbox.confine`: the daemon's user,
   ``CAP_NET_ADMIN`` alone, no_new_privs, not dumpable, seccomp);
3. removes what a killed predecessor left (the journal), then answers
   ``{"ready": true, ...}``;
4. serves one request at a time until phantomd closes the socket or dies
   (EOF), then removes everything it installed and exits.

It ignores SIGINT, SIGTERM and SIGHUP: a signal to phantomd's process group
(Ctrl-C, a service manager's stop) must not kill it before it cleaned up;
the end of the socket is its signal.  Every request gets an answer: a
refusal (counted per reason), the kernel's error, or ``ok``; nothing a
request holds can raise out of the loop.
"""

from __future__ import annotations

import argparse
import errno as E
import logging
import os
import select
import signal
import socket
import sys

from . import journal as J
from . import nftspec  # noqa: F401  (loaded before the drop: protocol imports it lazily)
from .kernel import FORWARDING, Kernel, KernelError
from .protocol import (KILLSWITCH_TABLE, MAX_MESSAGE, MAX_ROUTES, REASONS, Allowlist, Refused,
                       journal_entry_allowed, loads, parse_request, reply_error, reply_ok, rule_key)
from .sandbox import confine

log = logging.getLogger("phantom.privsep.helper")

GONE = (E.ENODEV, E.ESRCH, E.ENOENT, E.EADDRNOTAVAIL, E.ENXIO)


def rule_text(a: dict) -> str:
    """A rule as `ip rule` shows it."""
    sel = "from all" if a["fwmark"] is None else "%sfrom all fwmark %#x" % ("not " if a["invert"] else "",
                                                                         a["fwmark"])
    table = "main" if a["table"] == 254 else str(a["table"])
    sup = "" if a["suppress_prefixlength"] is None else " suppress_prefixlength %d" % a["suppress_prefixlength"]
    return "IPv%d %d: %s lookup %s%s" % (a["family"], a["priority"], sel, table, sup)


def _ip_interface(text: str):
    import ipaddress
    return ipaddress.ip_interface(text)


class Helper:
    """The request handlers and what they installed (sans socket)."""

    def __init__(self, allow: Allowlist, kernel: Kernel, journal: J.Journal):
        self.allow = allow
        self.k = kernel
        self.j = journal
        self.routes: dict = {}          # (prefix, table) -> journal entry
        self.rules: dict = {}           # rule_key -> journal entry
        self.addrs: dict = {}           # address -> journal entry
        self.link = None                # journal entry: the link was down before link_up
        self.nft: dict = {}             # table name -> journal entry: the table exists
        self.clean = False              # the daemon said "shutdown" before closing the socket
        self.forwarding: dict = {}      # family -> journal entry (the value before)
        self.resolved = None            # journal entry
        self.counters = {"requests": 0, "ok": 0, "failed": 0, "refused": 0}
        self.refused = {r: 0 for r in REASONS}

    # --- dispatch ---------------------------------------------------------------------------------
    def _refuse(self, exc: Refused) -> bytes:
        self.counters["refused"] += 1
        self.refused[exc.reason] += 1
        log.warning("refused request %s (%s, %d so far): %s", exc.id if exc.id is not None else "-",
                    exc.reason, self.counters["refused"], exc.detail)
        return reply_error(exc.id, exc.detail, refused=exc.reason)

    def handle(self, data: bytes, truncated: bool = False) -> bytes:
        """One message -> its reply.  Never raises."""
        self.counters["requests"] += 1
        try:
            req = parse_request(data, self.allow, truncated)
        except Refused as exc:
            return self._refuse(exc)
        except Exception as exc:                      # noqa: BLE001  (a bug must not end the helper)
            log.exception("request parser failed")
            self.counters["refused"] += 1
            self.refused["malformed"] += 1
            return reply_error(None, "malformed request (%s)" % exc.__class__.__name__, refused="malformed")
        try:
            extra = getattr(self, "op_" + req.op)(**req.args) or {}
        except Refused as exc:
            exc.id = req.id
            return self._refuse(exc)
        except KernelError as exc:
            self.counters["failed"] += 1
            log.info("request %d %s failed: %s", req.id, req.op, exc.strerror)
            return reply_error(req.id, exc.strerror or str(exc), errno=exc.errno or None,
                               **getattr(exc, "extra", {}))
        except Exception as exc:                      # noqa: BLE001
            log.exception("request %d %s failed", req.id, req.op)
            self.counters["failed"] += 1
            return reply_error(req.id, "internal error in the privileged helper: %s: %s"
                               % (exc.__class__.__name__, exc))
        self.counters["ok"] += 1
        return reply_ok(req.id, **extra)

    # --- ops --------------------------------------------------------------------------------------
    def op_status(self) -> dict:
        return {"pid": os.getpid(), "counters": dict(self.counters), "refused_by_reason": dict(self.refused),
                "installed": self.installed(), "allowlist": self.allow.to_json()}

    def installed(self) -> dict:
        return {"routes": sorted("%s table %d" % k for k in self.routes),
                "rules": len(self.rules), "addresses": sorted(self.addrs),
                "nft_tables": sorted(self.nft),
                "forwarding": sorted(self.forwarding), "resolved": self.resolved is not None}

    def op_link_up(self, addrgenmode_none: bool) -> dict:
        idx = self.allow.ifindex
        if self.link is not None:
            return {"already": True}
        was_up = self.k.link_is_up(idx)
        note = None
        if addrgenmode_none and not was_up:
            try:
                self.k.addrgenmode_none(idx)
            except KernelError as exc:          # a kernel without IPv6: nothing to quiet
                note = "IPv6 link-local addresses stay on (%s)" % exc.strerror
                log.info("%s: %s", self.allow.device, note)
        if was_up:
            return {"already": True, "note": note}
        entry = {"link": {"ifindex": idx, "was_up": False}}
        self.j.add(entry)
        try:
            self.k.set_up(idx, True)
        except KernelError:
            self.j.remove(entry)
            raise
        self.link = entry
        return {"note": note} if note else {}

    def op_addr_add(self, address) -> dict:
        key = str(address)
        if key in self.addrs:
            return {"already": True}
        entry = {"addr": {"address": key, "ifindex": self.allow.ifindex}}
        self.j.add(entry)
        try:
            self.k.addr("add", self.allow.ifindex, address)
        except KernelError as exc:
            self.j.remove(entry)
            if exc.errno == E.EEXIST:
                return {"already": True}          # the device had it: not ours to remove
            raise
        self.addrs[key] = entry
        log.info("address %s on %s", address, self.allow.device)
        return {}

    def op_route_add(self, net, table: int) -> dict:
        key = (str(net), table)
        if key in self.routes:
            return {"already": True}
        if len(self.routes) >= MAX_ROUTES:
            raise Refused("not_allowed", "this daemon has %d routes installed, the most it may have" % MAX_ROUTES)
        entry = {"route": {"prefix": str(net), "table": table, "ifindex": self.allow.ifindex}}
        self.j.add(entry)
        try:
            self.k.route("add", net, table)
        except KernelError as exc:
            self.j.remove(entry)
            if exc.errno != E.EEXIST:
                raise
            held = self.k.routes_for(net, table)
            if any(oif == self.allow.ifindex for oif, _, _ in held):
                return {"already": True}         # through our device already (not ours to remove)
            names = sorted({self.k.link_name(oif) or "ifindex %d" % oif if oif else "a multipath route"
                            for oif, _, _ in held}) or ["another route"]
            err = KernelError(E.EEXIST, "File exists: the kernel already routes %s through %s"
                              % (net, ", ".join(names)))
            err.extra = {"existing": names}
            raise err from None
        self.routes[key] = entry
        log.info("route %s via %s%s", net, self.allow.device, "" if table == 254 else " table %d" % table)
        return {}

    def op_route_del(self, net, table: int) -> dict:
        key = (str(net), table)
        entry = self.routes.get(key)
        if entry is None:
            raise Refused("not_allowed", "route %s (table %d) was not installed by this daemon" % (net, table))
        try:
            self.k.route("del", net, table)
        except KernelError as exc:
            if exc.errno not in GONE:
                raise
        del self.routes[key]
        self.j.remove(entry)
        log.info("route %s via %s removed", net, self.allow.device)
        return {}

    def op_rule_add(self, **a) -> dict:
        key = rule_key(a)
        if key in self.rules:
            return {"already": True}
        entry = {"rule": dict(a)}
        self.j.add(entry)
        try:
            self.k.rule("add", a)
        except KernelError:
            self.j.remove(entry)
            raise
        self.rules[key] = entry
        log.info("rule %s", rule_text(a))
        return {}

    def op_rule_del(self, **a) -> dict:
        key = rule_key(a)
        entry = self.rules.get(key)
        if entry is None:
            raise Refused("not_allowed", "that rule (priority %d) was not installed by this daemon" % a["priority"])
        try:
            self.k.rule("del", a)
        except KernelError as exc:
            if exc.errno not in GONE:
                raise
        del self.rules[key]
        self.j.remove(entry)
        return {}

    def op_nft_replace(self, name: str, spec: dict) -> dict:
        fresh = name not in self.nft
        entry = {"nft": name}
        if fresh:
            self.j.add(entry)
        try:
            self.k.nft_apply(nftspec.to_nft(spec, name))
        except KernelError:
            if fresh:
                self.j.remove(entry)
            raise
        self.nft[name] = entry
        log.info("nftables table inet %s replaced (%d chains, %d rules)", name, len(spec["chains"]),
                 len(spec["rules"]))
        return {"table": name}

    def op_nft_delete(self, name: str) -> dict:
        entry = self.nft.get(name)
        if entry is None:
            return {"already": True}
        self.k.nft_apply(nftspec.delete_batch(name))
        self.j.remove(entry)
        del self.nft[name]
        log.info("nftables table inet %s removed", name)
        return {}

    def op_shutdown(self) -> dict:
        """A clean stop: when the socket closes, everything goes, the kill
        switch too.  Without it (the daemon died), the kill switch stays."""
        self.clean = True
        return {}

    def op_forwarding(self, family: int, enabled: bool) -> dict:
        path = FORWARDING[family]
        if not enabled:
            entry = self.forwarding.get(family)
            if entry is None:
                raise Refused("not_allowed", "IPv%d forwarding was not turned on by this daemon, so it "
                                             "is not the daemon's to turn off" % family)
            self.k.sysctl_write(path, entry["forwarding"]["previous"])
            del self.forwarding[family]
            self.j.remove(entry)
            return {}
        if family in self.forwarding:
            return {"already": True}
        before = self.k.sysctl_read(path)
        if before == "1":
            return {"already": True}              # on before us: not ours to turn off
        entry = {"forwarding": {"family": family, "previous": before}}
        self.j.add(entry)
        try:
            self.k.sysctl_write(path, "1")
        except KernelError:
            self.j.remove(entry)
            raise
        self.forwarding[family] = entry
        log.info("IPv%d forwarding on (was %s)", family, before)
        return {}

    def op_resolved_register(self, dns: list, domains: list, default_route: bool = False) -> dict:
        dev = self.allow.device
        entry = self.resolved or {"resolved": {"ifindex": self.allow.ifindex}}
        if self.resolved is None:
            self.j.add(entry)
        try:
            self.k.resolved("dns", dev, *map(str, dns))
            self.k.resolved("domain", dev, *domains)
            self.k.resolved("default-route", dev, "true" if default_route else "false")
        except KernelError:
            try:
                self.k.resolved("revert", dev)
            except KernelError:
                pass
            self.j.remove(entry)
            self.resolved = None
            raise
        self.resolved = entry
        return {}

    def op_resolved_revert(self) -> dict:
        if self.resolved is None:
            return {"already": True}
        self.k.resolved("revert", self.allow.device)
        self.j.remove(self.resolved)
        self.resolved = None
        return {}

    # --- the end, and the start after a crash -----------------------------------------------------
    def _undo(self, entry: dict, recovering: bool) -> str:
        """Remove one journal entry's object; returns what was done (or '')."""
        (kind, v), = entry.items()
        try:
            if kind == "route":
                net = _ip_interface(v["prefix"]).network
                self.k.route("del", net, v["table"], oif=v["ifindex"])
                return "route %s%s" % (net, "" if v["table"] == 254 else " table %d" % v["table"])
            if kind == "rule":
                self.k.rule("del", v)
                return "rule priority %d" % v["priority"]
            if kind == "addr":
                self.k.addr("del", v["ifindex"], _ip_interface(v["address"]))
                return "address %s" % v["address"]
            if kind == "link":
                if recovering and self.k.link_name(v["ifindex"]) is None:
                    return ""
                self.k.set_up(v["ifindex"], False)
                return "link up"
            if kind == "nft":
                if recovering and not self.k.nft_has_table(v):
                    return ""
                self.k.nft_apply(nftspec.delete_batch(v))
                return "nftables table inet %s" % v
            if kind == "forwarding":
                path = FORWARDING.get(v["family"])
                if path and v["previous"] != "1" and self.k.sysctl_read(path) == "1":
                    self.k.sysctl_write(path, v["previous"])
                    return "IPv%d forwarding back to %s" % (v["family"], v["previous"])
                return ""
            if kind == "resolved":
                name = self.k.link_name(v["ifindex"])
                if name is None or (recovering and name != self.allow.device):
                    return ""
                self.k.resolved("revert", name)
                return "systemd-resolved settings of %s" % name
        except KernelError as exc:
            if exc.errno in GONE:
                return ""
            log.warning("could not remove %s %s: %s", kind, v, exc.strerror)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("journal entry %s: %s", entry, exc)
        return ""

    def cleanup(self) -> tuple:
        """Remove everything this helper installed, newest kind first; the
        kill switch table only after a clean stop (``shutdown``): when the
        daemon died, the host stays blocked (that is what the switch is
        for) and the journal keeps it for the next start to remove.
        Returns (done, kept)."""
        kept = [] if self.clean else [e for n, e in self.nft.items() if n == KILLSWITCH_TABLE]
        nft = [e for e in self.nft.values() if e not in kept]
        entries = ([self.resolved] if self.resolved else []) + nft \
            + list(self.rules.values()) + list(self.routes.values()) + list(self.addrs.values()) \
            + ([self.link] if self.link else []) + list(self.forwarding.values())
        done = [d for d in (self._undo(e, False) for e in entries) if d]
        self.routes.clear(), self.rules.clear(), self.addrs.clear(), self.forwarding.clear()
        self.nft.clear()
        self.link = self.resolved = None
        self.j.clear()
        for e in kept:
            self.j.add(e)
        return done, ["nftables table inet %s" % e["nft"] for e in kept]

    def recover(self) -> list:
        """Remove what the journal says a killed predecessor left."""
        try:
            entries = self.j.read()
        except OSError as exc:
            log.warning("cannot read the journal: %s", exc)
            entries = []
        order = {"resolved": 0, "nft": 1, "rule": 2, "route": 3, "addr": 4, "link": 5, "forwarding": 6}
        bad = [e for e in entries if not journal_entry_allowed(e, self.allow)]
        for e in bad:
            log.warning("journal entry outside this helper's allowlist, left alone: %s", str(e)[:200])
        entries = [e for e in entries if e not in bad and next(iter(e)) in order]
        entries.sort(key=lambda e: order[next(iter(e))])
        done = [d for d in (self._undo(e, True) for e in entries) if d]
        self.j.clear()
        return done


# --- the process ----------------------------------------------------------------------------------
def _eof(sock: socket.socket) -> bool:
    """After a zero-length read: is the other end gone (or an empty message)?"""
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN | select.POLLHUP | getattr(select, "POLLRDHUP", 0))
    return any(ev & (select.POLLHUP | getattr(select, "POLLRDHUP", 0) | select.POLLERR)
               for _, ev in p.poll(0))


def serve(sock: socket.socket, helper: Helper) -> None:
    sock.settimeout(None)
    while True:
        try:
            data, _anc, flags, _ = sock.recvmsg(MAX_MESSAGE)   # no room for SCM_RIGHTS: passed fds are dropped
        except InterruptedError:
            continue
        except OSError as exc:
            log.info("socket: %s", exc)
            return
        if not data and not flags & socket.MSG_TRUNC and _eof(sock):
            return
        reply = helper.handle(data, truncated=bool(flags & socket.MSG_TRUNC))
        try:
            sock.send(reply)
        except OSError:
            return


def _send(sock: socket.socket, obj: dict) -> None:
    import json
    sock.send(json.dumps(obj, sort_keys=True).encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="phantom.privsep.helper")
    ap.add_argument("--fd", type=int, required=True)
    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    from ..logsetup import setup_logging
    setup_logging("info")                     # the daemon's format; component privsep.helper
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, b"phantom-privsep", 0, 0, 0)       # PR_SET_NAME
    except (OSError, AttributeError):
        pass
    sock = socket.socket(fileno=args.fd)
    if sock.type != socket.SOCK_SEQPACKET:
        print("phantom.privsep.helper: --fd is not a SOCK_SEQPACKET socket", file=sys.stderr)
        return 2
    try:
        sock.settimeout(60.0)
        data, _anc, flags, _ = sock.recvmsg(MAX_MESSAGE)
        if flags & socket.MSG_TRUNC:
            raise Refused("oversized", "start message over %d bytes" % MAX_MESSAGE)
        if not data:
            return 0                                  # the daemon went away before it began
        allow = Allowlist.from_json(loads(data))
        jour = J.Journal.open(allow.journal)          # as root: the state directory is root's
        kernel = Kernel(allow.ifindex)
        kernel.link_name(allow.ifindex)               # loads what pyroute2 loads lazily, as root
        kernel.routes_for(_ip_interface("0.0.0.0/0").network, 254)
        sandbox = confine(allow.uid, allow.gid)
        helper = Helper(allow, kernel, jour)
        recovered = helper.recover()
    except (Refused, OSError, ValueError) as exc:
        text = exc.detail if isinstance(exc, Refused) else str(exc)
        log.error("cannot start: %s", text)
        try:
            _send(sock, {"ready": False, "error": text})
        except OSError:
            pass
        return 1
    for line in recovered:
        log.warning("removed a leftover of a previous run: %s", line)
    _send(sock, {"ready": True, "pid": os.getpid(), "recovered": recovered, "sandbox": sandbox,
                 "nft_tables": list(allow.nft_tables), "table": allow.table, "fwmark": allow.fwmark})
    try:
        serve(sock, helper)
    finally:
        done, kept = helper.cleanup()
        log.info("the daemon closed its socket: removed %d thing(s)%s", len(done),
                 (": " + "; ".join(done[:20])) if done else "")
        for what in kept:
            log.warning("the daemon stopped without a clean shutdown: %s stays (the kill switch "
                        "keeps blocking; the next start or `nft delete table inet %s` removes it)",
                        what, KILLSWITCH_TABLE)
        kernel.close()
        jour.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
