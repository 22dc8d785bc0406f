"""``phantom``: the command-line client.

Key tools (no daemon needed)::

    phantom genkey [--out FILE]       a new private key (base64), like `wg genkey`
    phantom pubkey < private          its public key, like `wg pubkey`

Talking to a running phantomd over its HTTP API::

    phantom open TARGET [--public-key K] [--name N] [--allowed-ips CIDR,...] [--groups G,...]
    phantom close PEER
    phantom status | peers
    phantom wait-ready [--timeout S]  exit 0 once the daemon answers and its device is up
    phantom firewall show | firewall set FILE

Elsewhere::

    phantom demo ...                  phantomlab.demo.main (the lab, imported only here)
    phantom verify ...                phantomlab.verify.main
    phantom directory serve ...       phantom.cli.directory.main
    phantom wg import|export|genpsk   phantom.cli.wg.main

API options (before or after the subcommand): ``--api URL`` (default
http://127.0.0.1:4567, or $PHANTOM_API), ``--socket PATH`` ($PHANTOM_SOCKET),
``--token-file PATH`` (default <state dir>/token, or $PHANTOM_TOKEN_FILE),
``--json`` and ``--timeout``.  API errors print ``error: <message>`` and exit 1.

The client uses only the standard library (http.client) so that it starts fast;
it imports http.client only when it talks to phantomd, and a delegated command
group (``phantom network``, ``phantom directory``, ...) imports only its own module.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import sys
import urllib.parse
from pathlib import Path

DEFAULT_API = "http://127.0.0.1:4567"
DEFAULT_TIMEOUT = 120.0


class CliError(Exception):
    """Printed as ``error: <message>``; exit status 1."""


# --- HTTP client ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _unix_connection_class():
    """http.client's connection over a Unix socket (made on first use: the
    commands that never talk to phantomd do not import http.client)."""
    import http.client
    import socket

    class UnixHTTPConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float):
            super().__init__("localhost", timeout=timeout)
            self._path = path

        def connect(self):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
            except BaseException:
                sock.close()
                raise
            self.sock = sock

    return UnixHTTPConnection


def _default_state_dir() -> Path:
    # Same rule as the daemon (phantom.node.config.default_state_dir), kept
    # here so the client does not import the config machinery.
    return Path("/var/lib/phantom") if os.geteuid() == 0 else Path.cwd() / ".phantom"


class ApiClient:
    def __init__(self, api: str | None = None, socket_path: str | None = None,
                 token_file: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.api = api or DEFAULT_API
        self.socket_path = socket_path
        self.timeout = timeout
        self.token_given = bool(token_file)
        # The token file: --token-file, else (for changes) the one the daemon's
        # runtime record names (phantom/runtime.py), else <default state dir>/token.
        self.token_file = Path(token_file) if token_file else _default_state_dir() / "token"
        self._record = False         # not looked up yet
        if not socket_path:
            u = urllib.parse.urlsplit(self.api)
            if u.scheme != "http" or not u.hostname:
                raise CliError("--api must be an http:// URL like %s, not %r" % (DEFAULT_API, self.api))
            self._host, self._port = u.hostname, u.port or 80
            self._prefix = u.path.rstrip("/")
        else:
            self._prefix = ""

    def where(self) -> str:
        return "unix socket %s" % self.socket_path if self.socket_path else self.api

    def record(self) -> dict | None:
        """The runtime record of the daemon at our address (None if it wrote none)."""
        if self._record is False:
            from phantom import runtime
            if self.socket_path:
                self._record = runtime.find_record(socket_path=self.socket_path)
            else:
                self._record = runtime.find_record(self._host, self._port)
        return self._record

    def _token(self, required: bool) -> str | None:
        path, rec = self.token_file, None
        if required and not self.token_given:
            rec = self.record()
            if rec is not None and isinstance(rec.get("token_file"), str):
                path = Path(rec["token_file"])
        try:
            return path.read_text().strip()
        except OSError as exc:
            if not required:
                return None
            reason = exc.strerror or str(exc)
            if self.token_given:
                hint = ("pass the daemon's own token file: <state_dir>/token, with the state_dir "
                        "of its config")
            elif rec is not None:
                hint = ("it is the token file of the phantomd at %s (pid %s), mode 0600: run as "
                        "root or as the daemon's user" % (self.where(), rec.get("pid")))
            else:
                hint = ("no phantomd running at %s recorded where its token is (one started as "
                        "root does); pass --token-file <state_dir>/token, with the state_dir of its "
                        "config (default %s)" % (self.where(), _default_state_dir()))
            raise CliError("cannot read the API token from %s (%s): %s" % (path, reason, hint)) from None

    def _connection(self) -> http.client.HTTPConnection:
        import http.client
        if self.socket_path:
            return _unix_connection_class()(self.socket_path, self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def request(self, method: str, path: str, body=None):
        import http.client
        import socket
        mutating = method not in ("GET", "HEAD")
        headers = {"Accept": "application/json"}
        token = self._token(required=mutating)
        if token:
            headers["Authorization"] = "Bearer " + token
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except ConnectionRefusedError:
                raise CliError("cannot connect to phantomd at %s: connection refused (is phantomd "
                               "running? choose another with --api or --socket)" % self.where()) from None
            except FileNotFoundError:
                raise CliError("cannot connect to phantomd: %s does not exist (is phantomd running "
                               "with --http-socket?)" % self.socket_path) from None
            except socket.timeout:
                raise CliError("phantomd at %s did not answer within %g s"
                               % (self.where(), self.timeout)) from None
            except (OSError, http.client.HTTPException) as exc:
                raise CliError("cannot talk to phantomd at %s: %s" % (self.where(), exc)) from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, ValueError):
            payload = None
        if resp.status >= 400:
            if isinstance(payload, dict) and isinstance(payload.get("error"), str):
                raise CliError(payload["error"])
            raise CliError("HTTP %d %s from %s" % (resp.status, resp.reason, self.where()))
        if payload is None:
            raise CliError("phantomd at %s sent a response that is not JSON" % self.where())
        return payload


# --- output -----------------------------------------------------------------------------------
PEER_COLUMNS = ("name", "path", "endpoint", "endpoint_name", "allowed_ips", "groups", "state", "protocol", "cipher", "latest_handshake",
                "rx_bytes", "tx_bytes", "public_key")


def _human_bytes(n) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return _cell(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)


def _cell(value, key: str = "") -> str:
    if value is None or value == "":
        return "-"
    if key.endswith("_bytes"):
        return _human_bytes(value)
    if key == "latest_handshake" and isinstance(value, (int, float)):
        return "%ss ago" % (("%.1f" % value) if value < 100 else "%d" % value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return ("%.1f" % value) if value != int(value) else str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join("%s=%s" % (k, _cell(v)) for k, v in value.items()) or "-"
    return str(value)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        name = prefix + str(k)
        if isinstance(v, dict) and v:
            rows.extend(_flatten(v, name + "."))
        else:
            rows.append((name, v))
    return rows


def format_kv(d: dict) -> str:
    rows = _flatten(d)
    if not rows:
        return "(empty)"
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join("%-*s  %s" % (width, k + ":", _cell(v, k)) for k, v in rows)


def format_table(rows: list[dict], preferred=()) -> str:
    if not rows:
        return "(none)"
    cols = [c for c in preferred if any(c in r for r in rows)]
    if not cols:                    # no preferred columns known: show every field
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
    cells = [[_cell(r.get(c), c) for c in cols] for r in rows]
    heads = [c.upper().replace("_", " ") for c in cols]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _emit(args, payload, human) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=False))
    else:
        print(human(payload))


# --- subcommands ------------------------------------------------------------------------------
def cmd_genkey(args) -> int:
    from phantom import keys
    if args.out:
        try:
            key = keys.write_private_key(args.out)
        except FileExistsError:
            raise CliError("%s already exists; not overwriting a key file" % args.out) from None
        except OSError as exc:
            raise CliError("cannot write %s: %s" % (args.out, exc.strerror or exc)) from None
        try:
            print(keys.encode_key(keys.public_key(key)))   # the public key, safe to show
        finally:
            from phantom.crypto import memzero
            memzero(key)
        return 0
    if sys.stdout.isatty():
        print("warning: writing a private key to a terminal; prefer `phantom genkey --out FILE`",
              file=sys.stderr)
    print(keys.genkey())
    return 0


def cmd_pubkey(args) -> int:
    from phantom import keys
    text = sys.stdin.read(4096)
    try:
        print(keys.pubkey(text))
    except keys.KeyFormatError as exc:
        raise CliError("%s (pubkey reads a private key on standard input)" % exc) from None
    return 0


def _client(args) -> ApiClient:
    return ApiClient(args.api, args.socket, args.token_file, args.timeout)


def cmd_open(args) -> int:
    body = {}
    if args.public_key:
        body["public_key"] = args.public_key
    if args.name:
        body["name"] = args.name
    if args.allowed_ips:
        body["allowed_ips"] = [n.strip() for arg in args.allowed_ips for n in arg.split(",")
                               if n.strip()]
    if args.protocol:
        body["protocol"] = args.protocol
    if args.groups:
        body["groups"] = sorted({g.strip() for arg in args.groups for g in arg.split(",")
                                 if g.strip()})
    from phantom.syntax import LOOKUP_FAILED, NO_ADDRESS
    target = urllib.parse.quote(args.target, safe=":[]")
    try:
        result = _client(args).request("POST", "/open/" + target, body or None)
    except CliError as exc:
        # phantomd never repeats request text; the name is ours to show
        if ":" in args.target and str(exc).startswith((NO_ADDRESS, LOOKUP_FAILED)):
            host = args.target.rpartition(":")[0]
            raise CliError("cannot resolve %s: %s" % (host, exc)) from None
        raise
    _emit(args, result, format_kv)
    return 0


def cmd_close(args) -> int:
    result = _client(args).request("POST", "/close/" + urllib.parse.quote(args.peer, safe=""))
    _emit(args, result, format_kv)
    return 0


# What each drop reason means, for `phantom status` (docs/usage.md lists them too).
# Data-path drops (phantom.dataplane.types.Drop, lower case):
DROP_REASONS = {
    "malformed": "datagrams with bad framing, an unknown type or bad reserved bytes",
    "truncated": "datagrams shorter than their type needs",
    "oversized": "packets larger than the tunnel MTU or the largest datagram",
    "unknown_index": "transport packets for a session we do not have (expired, or not ours)",
    "replay": "packets whose counter was already seen or is behind the replay window",
    "auth_failed": "packets whose authentication tag did not verify (forged or corrupted)",
    "key_expired": "packets on a session past its lifetime",
    "no_route": "outgoing packets to an address in no peer's allowed IPs: nowhere to send them "
                "(the host sent them into the device; ICMP unreachable answers them)",
    "src_not_allowed": "decrypted packets whose inner source is outside the sending peer's allowed IPs",
    "firewall": "packets the firewall dropped or rejected (`phantom firewall show`)",
    "no_endpoint": "packets for a peer whose address is not known (yet)",
    "staged_overflow": "packets over the queue limit while a handshake was under way",
    "bad_inner": "decrypted payloads that are not a valid packet for the mode",
    "send_failed": "sends the kernel refused",
    "control_overflow": "handshake messages that found the control plane's queue full",
    "relay_unknown_id": "relay frames whose (sender, relay id) pair this relay or peer never installed",
    "relay_budget": "relay frames over the sending peer's relay byte or packet budget",
}
# Control-plane drops (GET /status "handshake_drops"):
HANDSHAKE_DROP_REASONS = {
    "malformed": "handshake messages of the wrong size or shape",
    "bad_mac1": "handshake messages without a valid mac1 (the sender does not know our public key)",
    "cookie_sent": "initiations answered with a cookie reply instead (we were under load)",
    "rate_limited": "initiations over a source's rate limit while under load",
    "bad_handshake": "handshake messages that failed to decrypt or verify",
    "unknown_key": "initiations from a key that is not one of our peers (never answered)",
    "wrong_protocol": "handshakes in the other protocol than the peer's (phantom / wireguard)",
    "replayed_initiation": "initiations whose timestamp is not newer than the last one",
    "unknown_index": "responses or cookie replies for a handshake we did not start",
    "bad_cookie_reply": "cookie replies that did not decrypt",
    "no_common_suite": "initiations from a Phantom peer that allows none of our cipher suites "
                       "([interface] / [[peer]] ciphers; never answered)",
    "refused": "initiations from an unknown key whose membership we refused "
               "(answered with an authenticated refusal: the reason is in our log)",
    "refusal_rate_limited": "refusals not sent: over the limit per address or per key",
    "admit_failed": "initiations whose membership check failed with an error (see the log)",
    "refused_us": "our initiations the peer refused (not a member, certificate expired, removed ...)",
}


def _format_drops(title: str, drops, reasons: dict) -> str:
    counted = [(k, v) for k, v in (drops or {}).items() if v] if isinstance(drops, dict) else []
    if not counted:
        return "%s: none" % title
    width = max(len(k) for k, _ in counted)
    num = max(len(str(v)) for _, v in counted)
    lines = ["%s:" % title]
    for k, v in sorted(counted):
        lines.append(("  %-*s  %*s  %s" % (width, k, num, v, reasons.get(k, ""))).rstrip())
    return "\n".join(lines)


def format_status(st) -> str:
    """`phantom status`: the daemon's fields, then its peers as a table (one
    line a peer, as `phantom peers`), then the drops that happened, each
    reason explained."""
    if not isinstance(st, dict):
        return format_kv({"status": st})
    peers = st.get("peers")
    rest = {k: v for k, v in st.items() if k not in ("drops", "handshake_drops")
            and not (k == "peers" and isinstance(peers, list))}
    parts = [format_kv(rest)]
    if isinstance(peers, list):
        parts.append("peers (%d):\n%s" % (len(peers), format_table(peers, PEER_COLUMNS)
                                          if peers else "  none"))
    if "drops" in st:
        parts.append(_format_drops("drops", st["drops"], DROP_REASONS))
    if "handshake_drops" in st:
        parts.append(_format_drops("handshake drops", st["handshake_drops"], HANDSHAKE_DROP_REASONS))
    return "\n\n".join(parts)


def cmd_status(args) -> int:
    _emit(args, _client(args).request("GET", "/status"), format_status)
    return 0


def cmd_peers(args) -> int:
    payload = _client(args).request("GET", "/peers")
    peers = payload.get("peers", []) if isinstance(payload, dict) else payload
    _emit(args, payload, lambda _: format_table(list(peers), PEER_COLUMNS))
    return 0


def _format_policy(pol: dict) -> str:
    """The network policy in force (issue 21) as GET /firewall reports it."""
    head = "network policy: seq %s, default %s (here: %s), signed by %s" % (
        pol.get("seq"), pol.get("default"), pol.get("effective_default_in"), pol.get("issuer"))
    rows = [{"#": r.get("index"), "from": ",".join(map(str, r.get("from", []))),
             "to": ",".join(map(str, r.get("to", []))),
             "proto": " ".join([str(r.get("proto"))] + [",".join(map(str, r.get("ports") or []))]
                               ).strip(),
             "action": r.get("action"), "here": "yes" if r.get("applies") else "no",
             "hits": r.get("hits", 0)} for r in pol.get("rules", []) if isinstance(r, dict)]
    return head + "\n" + (format_table(rows) if rows else "policy rules: (none)")


def _format_firewall(fw) -> str:
    if isinstance(fw, dict):
        rules = fw.get("rules")
        policy = fw.get("policy")
        rest = {k: v for k, v in fw.items() if k not in ("rules", "policy")}
        parts = []
        if rest:
            parts.append(format_kv(rest))
        if isinstance(rules, list) and all(isinstance(r, dict) for r in rules):
            parts.append(format_table(rules) if rules else "rules: (none)")
        elif rules is not None:
            parts.append("rules: %s" % json.dumps(rules))
        if isinstance(policy, dict):
            parts.append(_format_policy(policy))
        return "\n".join(parts) or "(empty)"
    return json.dumps(fw, indent=2)


def _read_rules(path: str) -> dict:
    try:
        if path == "-":
            text, name = sys.stdin.read(), "<stdin>"
        else:
            text, name = Path(path).read_text(encoding="utf-8"), path
    except OSError as exc:
        raise CliError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    if name.endswith(".toml"):
        import tomllib
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CliError("%s: invalid TOML: %s" % (name, exc)) from None
        # A whole phantom.toml works too: take its [firewall] table.
        if isinstance(doc.get("firewall"), dict) and "rules" not in doc:
            doc = doc["firewall"]
        return doc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CliError("%s: invalid JSON (%s); use a .toml file for TOML" % (name, exc)) from None
    if not isinstance(doc, dict):
        raise CliError("%s: the rules must be a JSON object" % name)
    return doc


def cmd_firewall(args) -> int:
    client = _client(args)
    if args.fw_action == "set":
        result = client.request("PUT", "/firewall", _read_rules(args.file))
        _emit(args, result, format_kv)
    else:
        _emit(args, client.request("GET", "/firewall"), _format_firewall)
    return 0


def _format_reload(r) -> str:
    lines = []
    for key in ("added", "removed", "changed", "unchanged"):
        items = r.get(key) or []
        if isinstance(items, dict):
            items = ["%s (%s)" % (n, ", ".join(f)) for n, f in sorted(items.items())]
        lines.append("%-10s %s" % (key + ":", ", ".join(items) or "-"))
    lines.append("%-10s %s" % ("firewall:", "replaced" if r.get("firewall") else "unchanged"))
    if r.get("routes") is not None:              # kernel routes, through the privileged helper
        rt = r["routes"]
        lines.append("%-10s %s" % ("routes:", ", ".join(["+" + n for n in rt.get("added", [])]
                                                       + ["-" + n for n in rt.get("removed", [])]) or "unchanged"))
    for note in r.get("notes") or []:
        lines.append("note: %s" % note)
    return "\n".join(lines)


def cmd_dns(args) -> int:
    from phantom.dns.show import format_dns
    _emit(args, _client(args).request("GET", "/dns"), lambda d: format_dns(d, args.resolv_conf))
    return 0


def _format_exit(e) -> str:
    lines = ["%-10s %s" % ("exit:", e.get("use") or "none (traffic goes direct)"),
             "%-10s %s" % ("offered:", ", ".join(e.get("offered") or []) or "- (no [[peer]] has exit_node = true)")]
    if e.get("use"):
        lines.append("%-10s %s" % ("dns:", ", ".join(e.get("dns") or []) or "-"))
        if e.get("dns_registered"):
            lines.append("%-10s %s" % ("", "registered with systemd-resolved (every name, default route)"))
        elif e.get("dns_error"):
            lines.append("%-10s %s" % ("", e["dns_error"]))
        if e.get("resolv_conf"):
            lines.append("resolv.conf:\n" + e["resolv_conf"].rstrip("\n"))
        if e.get("kill_switch"):
            lines.append("%-10s on (%s)" % ("kill sw.:", ", ".join(e["kill_switch"])))
    return "\n".join(lines)


def cmd_exit(args) -> int:
    client = _client(args)
    if args.exit_action == "use":
        result = client.request("PUT", "/exit", {"peer": args.peer})
    elif args.exit_action == "off":
        result = client.request("DELETE", "/exit")
    else:
        result = client.request("GET", "/exit")
    _emit(args, result, _format_exit)
    return 0


def cmd_reload(args) -> int:
    _emit(args, _client(args).request("POST", "/reload"), _format_reload)
    return 0


WAIT_INTERVAL = 0.1


def not_ready(st) -> str | None:
    """Why a /status answer is not "ready" yet (None: it is)."""
    if not isinstance(st, dict):
        return "its status is not an object"
    if not st.get("ready", True):        # (a daemon without "ready" is ready once it answers)
        return "it is still setting up"
    if st.get("device") and st.get("device_up") is False:
        return "its device %s is not up" % st["device"]
    return None


def cmd_wait_ready(args) -> int:
    """Poll GET /status until the daemon answers, is set up and its device is
    up: then exit 0.  An unhealthy daemon, or --timeout, is an error."""
    import time
    deadline = time.monotonic() + args.timeout
    client = ApiClient(args.api, args.socket, args.token_file, timeout=max(0.2, min(2.0, args.timeout)))
    why = "no answer yet"
    while True:
        try:
            st = client.request("GET", "/status")
        except CliError as exc:
            why = str(exc)
        else:
            if isinstance(st, dict) and st.get("healthy") is False:
                raise CliError("phantomd at %s is not healthy: %s" % (client.where(),
                                                                       st.get("failure") or "?"))
            why = not_ready(st)
            if why is None:
                if args.json:
                    print(json.dumps(st, indent=2))
                else:
                    where = ("%s device %s up" % (st.get("mode"), st["device"]) if st.get("device")
                             else "test port %s" % st.get("test_port"))
                    print("phantomd at %s is ready: %s, udp port %s" % (client.where(), where,
                                                                        st.get("listen_port")))
                return 0
        left = deadline - time.monotonic()
        if left <= 0:
            raise CliError("phantomd at %s is not ready after %g s: %s" % (client.where(), args.timeout,
                                                                            why))
        time.sleep(min(WAIT_INTERVAL, left))


# --- dispatch ---------------------------------------------------------------------------------
def _api_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("--api", metavar="URL", default=d(os.environ.get("PHANTOM_API")),
                   help="phantomd's API (default %s, or $PHANTOM_API)" % DEFAULT_API)
    p.add_argument("--socket", metavar="PATH", default=d(os.environ.get("PHANTOM_SOCKET")),
                   help="talk to phantomd's Unix socket instead ($PHANTOM_SOCKET)")
    p.add_argument("--token-file", metavar="PATH", default=d(os.environ.get("PHANTOM_TOKEN_FILE")),
                   help="API token (default <state dir>/token: /var/lib/phantom as root, else ./.phantom)")
    p.add_argument("--json", action="store_true", default=d(False), help="print JSON")
    p.add_argument("--timeout", type=float, metavar="SECONDS", default=d(DEFAULT_TIMEOUT),
                   help="give up waiting for phantomd after this long (default %g)" % DEFAULT_TIMEOUT)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phantom", description="Phantom tunnel client and key tool.")
    _api_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _api_options(common, suppress=True)

    g = sub.add_parser("genkey", help="print a new private key (base64)")
    g.add_argument("--out", metavar="FILE",
                   help="write the key to FILE (mode 0600, never overwritten) and print its public key")
    g.set_defaults(func=cmd_genkey)
    sub.add_parser("pubkey", help="read a private key on stdin, print its public key"
                   ).set_defaults(func=cmd_pubkey)

    o = sub.add_parser("open", parents=[common], help="open a tunnel: IP:PORT, [IPv6]:PORT or a peer name")
    o.add_argument("target", help="IP:PORT, [IPv6]:PORT, or the name of a known peer")
    o.add_argument("--public-key", metavar="KEY", help="the peer's base64 public key")
    o.add_argument("--name", metavar="NAME", help="name to give the peer")
    o.add_argument("--allowed-ips", metavar="CIDR[,CIDR]", action="append",
                   help="inner prefixes to route to a new peer (repeatable)")
    o.add_argument("--protocol", choices=("phantom", "wireguard"),
                   help="what a new peer speaks (default phantom; wireguard: a stock WireGuard peer)")
    o.add_argument("--groups", metavar="GROUP[,GROUP]", action="append",
                   help="firewall groups of a new peer (rules' src_group/dst_group; repeatable)")
    o.set_defaults(func=cmd_open)

    c = sub.add_parser("close", parents=[common], help="close the tunnel to a peer")
    c.add_argument("peer", help="peer name or base64 public key")
    c.set_defaults(func=cmd_close)

    sub.add_parser("status", parents=[common], help="daemon status").set_defaults(func=cmd_status)
    sub.add_parser("peers", parents=[common], help="peers and sessions").set_defaults(func=cmd_peers)

    f = sub.add_parser("firewall", help="show or replace the firewall rules")
    fsub = f.add_subparsers(dest="fw_action", metavar="ACTION", required=True)
    fsub.add_parser("show", parents=[common], help="print the rules in force")
    fs = fsub.add_parser("set", parents=[common], help="replace the rules from a JSON or TOML file")
    fs.add_argument("file", help="rules file (.json or .toml; '-' reads JSON from stdin)")
    f.set_defaults(func=cmd_firewall)

    for cmd in ("dns", "names"):
        d = sub.add_parser(cmd, parents=[common], help="the names the name service answers ([dns])"
                           if cmd == "dns" else "the same as `phantom dns`")
        d.add_argument("--resolv-conf", action="store_true",
                       help="print resolv.conf lines for a host without systemd-resolved")
        d.set_defaults(func=cmd_dns)

    e = sub.add_parser("exit", parents=[common], help="send all traffic through an exit node: "
                       "`phantom exit use NAME`, `phantom exit off`, `phantom exit` (which one)")
    esub = e.add_subparsers(dest="exit_action", metavar="ACTION")
    eu = esub.add_parser("use", parents=[common], help="route 0.0.0.0/0, ::/0 and DNS through peer NAME "
                         "(a [[peer]] with exit_node = true)")
    eu.add_argument("peer", metavar="NAME")
    esub.add_parser("off", parents=[common], help="stop using an exit: traffic goes direct again")
    esub.add_parser("show", parents=[common], help="the exit in use (the default)")
    e.set_defaults(func=cmd_exit)

    sub.add_parser("wait-ready", parents=[common],
                   help="wait until phantomd answers and its device is up (--timeout S, default "
                   "%g); exit 1 if it does not" % DEFAULT_TIMEOUT).set_defaults(func=cmd_wait_ready)
    sub.add_parser("reload", parents=[common],
                   help="re-read phantomd's config file: peers and firewall change in place"
                   ).set_defaults(func=cmd_reload)
    sub.add_parser("verify", help="capture the wire while a marker crosses a peer's tunnel: "
                   "is anything plaintext? (root, on the daemon's host)", add_help=False)
    sub.add_parser("demo", help="two namespaces, two daemons, one tunnel (see README)", add_help=False)
    sub.add_parser("directory", help="the public-key directory: `phantom directory serve ...`",
                   add_help=False)
    sub.add_parser("join", help="enrol this machine in a network: `phantom join TOKEN`",
                   add_help=False)
    sub.add_parser("wg", help="WireGuard configs: `phantom wg import wg0.conf`, `phantom wg export`",
                   add_help=False)
    return p


# Subcommands implemented in other modules: everything after the word goes to them.
# demo and verify live in the lab package (phantomlab), installed alongside
# phantom; it is imported only when one of them runs.
DELEGATED = {"demo": "phantomlab.demo", "directory": "phantom.cli.directory",
             "network": "phantom.network.cli",
             "join": "phantom.cli.join",
             "wg": "phantom.cli.wg",
             "verify": "phantomlab.verify"}
# Those of them that talk to phantomd take the API options too (wherever given).
DELEGATED_API = frozenset({"verify"})

# The API options that may come before the subcommand's word (see _api_options).
_GLOBAL_VALUED = ("--api", "--socket", "--token-file", "--timeout")
_GLOBAL_FLAGS = ("--json",)


def _leading_options(argv: list[str]) -> int:
    """How many of ``argv``'s first words are API options (with their values)
    given before the subcommand's word."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _GLOBAL_FLAGS:
            i += 1
        elif word in _GLOBAL_VALUED:
            i += 2
        elif word.startswith(tuple(o + "=" for o in _GLOBAL_VALUED)):
            i += 1
        else:
            break
    return min(i, len(argv))


def _delegate(command: str, rest: list[str]) -> int:
    module_name = DELEGATED[command]
    if importlib.util.find_spec(module_name) is None:
        raise CliError("`phantom %s` is not available in this build (%s is missing)"
                       % (command, module_name))
    module = importlib.import_module(module_name)
    rc = module.main(rest)
    return int(rc or 0)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        lead = _leading_options(argv)
        if lead < len(argv) and argv[lead] in DELEGATED:
            command, options = argv[lead], argv[:lead]
            if options and command not in DELEGATED_API:
                raise CliError("`phantom %s` does not talk to phantomd: %s is not one of its options"
                               % (command, options[0].split("=")[0]))
            # `phantom --token-file F verify PEER`: the options go along
            return _delegate(command, options + argv[lead + 1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return args.func(args)
    except CliError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
