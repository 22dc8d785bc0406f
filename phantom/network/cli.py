"""``phantom network ...``: the admin's commands on an authority state directory.

    phantom network init NAME [--domain D] [--ipv4 PREFIX] [--ipv6 PREFIX]
                              [--directory URL]... [--rendezvous KEY@HOST:PORT]...
                              [--relay KEY@HOST:PORT]... [--cert-lifetime 30d]
    phantom network show
    phantom network invite [--name N] [--groups a,b] [--uses K] [--expires 24h]
                           [--directory URL]...
    phantom network invites [--all]
    phantom network invites revoke ID
    phantom network members [--all]
    phantom network remove NAME|KEY
    phantom network rotate [--authority-key FILE] [--admission-lifetime 365d]
    phantom network policy show | set FILE | test SRC DST PORT[/PROTO]|PROTO
    phantom network routes
    phantom network routes approve|revoke NAME [PREFIX...] [--exit]

``invite``, ``invites``, ``members``, ``remove``, ``policy`` and ``routes`` work on the authority
directory's own ledger, or, with ``--admin-token-file F`` (remote mode), on
the directory that serves the network (``phantom directory serve --network``):
``--directory URL`` names it (default: the first URL of the network's
definition in --dir).  A directory serving the network keeps its own
invites and members: use remote mode for those.

Every command takes ``--dir DIR`` (default $PHANTOM_NETWORK_DIR, else
/var/lib/phantom/authority for root and ./.phantom/authority otherwise) and
``--json``.  ``invite`` prints the token alone on stdout (the rest on
stderr), so ``TOKEN=$(phantom network invite)`` works.  Errors print
``error: <message>`` and exit 1.  See docs/network.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .canonical import b64
from .authority import ADMISSION_KEY, AUTHORITY_KEY, DEFINITION, AuthorityDir, init
from .definition import DEFAULT_ADMISSION_LIFETIME, DEFAULT_CERT_LIFETIME
from .errors import NetworkError
from .invite import DEFAULT_INVITE_TTL, create_invite
from .join import add_invite, member_rows, remove, revoke_invite
from .keys import SigningKey, atomic_write, load_key, read_limited, save_key
from .rotate import rotate

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class UsageError(Exception):
    """Printed as ``error: <message>``; exit status 1."""


def default_dir() -> Path:
    env = os.environ.get("PHANTOM_NETWORK_DIR")
    if env:
        return Path(env)
    return Path("/var/lib/phantom/authority") if os.geteuid() == 0 else \
        Path.cwd() / ".phantom" / "authority"


def duration(text: str) -> int:
    """"90", "90s", "15m", "24h", "30d", "2w" -> seconds."""
    m = re.fullmatch(r"([0-9]{1,9})([smhdw]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError("%r is not a duration (like 3600, 15m, 24h, 30d)" % text)
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def server(text: str) -> tuple:
    """"KEY@HOST:PORT" -> (key bytes, "HOST:PORT"); the endpoint is checked later."""
    key, sep, endpoint = text.partition("@")
    if not sep:
        raise argparse.ArgumentTypeError("%r: write KEY@HOST:PORT (the server's public key, "
                                         "base64)" % text)
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise argparse.ArgumentTypeError("%r: the key is not base64" % text) from None
    if len(raw) != 32:
        raise argparse.ArgumentTypeError("%r: the key is not 32 bytes" % text)
    return raw, endpoint


def groups(text: str) -> list:
    return [g.strip() for g in text.split(",") if g.strip()]


def _out(args, human: str, obj) -> None:
    if args.json:
        print(json.dumps(obj, indent=2, sort_keys=True))
    else:
        print(human)


def _rows(args, rows: list, empty: str, fmt: str, header: tuple,
          cells: Callable[[dict], tuple]) -> int:
    """A listing: JSON with --json; else ``empty`` when there is nothing, or a
    table (``fmt`` over the header, then over ``cells(row)`` for each row)."""
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif not rows:
        print(empty)
    else:
        print(fmt % header)
        for r in rows:
            print(fmt % cells(r))
    return 0


def _open(args) -> AuthorityDir:
    return AuthorityDir.open(args.dir)


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def cmd_init(args, now: Callable[[], float]) -> int:
    options = {"directory": args.directory, "rendezvous": args.rendezvous,
               "relays": args.relay, "cert_lifetime": args.cert_lifetime}
    for name in ("domain", "ipv4", "ipv6"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    auth = init(args.dir, args.name, now(), **options)
    d = auth.definition
    lines = ["network %s created in %s" % (d.name, auth.path),
             "  fingerprint  %s" % d.fingerprint,
             "  domain       %s" % d.domain,
             "  ipv4         %s" % d.ipv4,
             "  ipv6         %s" % d.ipv6,
             "  directory    %s" % (", ".join(d.directory) or
                                    "(none: invites need one; make the network with --directory)"),
             "  certificates valid %d days" % (d.cert_lifetime // 86400),
             "  files        %s" % ", ".join("%s (%o)" % kv for kv in
                                            sorted(auth.files().items())),
             "keep %s offline once you are done: only network changes need it"
             % (auth.path / "authority.key")]
    _out(args, "\n".join(lines), dict(d.summary(), dir=str(auth.path)))
    return 0


def cmd_show(args, now: Callable[[], float]) -> int:
    auth = _open(args)
    d = auth.definition
    s = d.summary()
    lines = ["network %s (%s)" % (d.name, d.fingerprint),
             "  domain %s, ipv4 %s, ipv6 %s" % (d.domain, d.ipv4, d.ipv6),
             "  directory %s" % (", ".join(d.directory) or "-"),
             "  rendezvous %s" % (", ".join(x["endpoint"] for x in s["rendezvous"]) or "-"),
             "  relays %s" % (", ".join(x["endpoint"] for x in s["relays"]) or "-"),
             "  admission keys %s" % ", ".join("%s (until %s)" % (a["key"], _when(a["expires"]))
                                               for a in s["admission"]),
             "  seq %d, issued %s" % (d.seq, _when(d.issued))]
    _out(args, "\n".join(lines), s)
    return 0


def _remote(args) -> bool:
    return getattr(args, "admin_token_file", None) is not None


def _ask(args, method: str, path: str, body=None):
    """One admin request to the directory serving the network (remote mode)."""
    from phantom.http.client import Unreachable, request_json
    token_file = Path(args.admin_token_file)
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise UsageError("--admin-token-file %s: %s" % (token_file, exc.strerror or exc)) from None
    urls = list(args.directory or [])
    if not urls:
        try:
            urls = list(_open(args).definition.directory)
        except NetworkError:
            urls = []
        if not urls:
            raise UsageError("which directory? pass --directory URL (remote mode)")
    url = urls[0]
    try:
        status, doc = request_json(url, method, path, body, token=token)
    except Unreachable as exc:
        raise UsageError("directory %s: %s" % (url, exc)) from None
    if status >= 400:
        message = doc.get("error") if isinstance(doc, dict) else None
        raise UsageError("directory %s refused: %s" % (url, message or "HTTP %d" % status))
    return doc


def _print_invite(args, token_text: str, s: dict) -> None:
    if args.json:
        print(json.dumps(dict(s, token=token_text), indent=2, sort_keys=True))
        return
    print(token_text)
    print("invite %s: %d use%s, expires %s%s%s" % (
        s["id"], s["uses"], "" if s["uses"] == 1 else "s", _when(s["expires"]),
        (", name " + s["name"]) if s["name"] else "",
        (", groups " + ",".join(s["groups"])) if s["groups"] else ""), file=sys.stderr)


def cmd_invite(args, now: Callable[[], float]) -> int:
    if _remote(args):
        body = {"groups": args.groups, "uses": args.uses, "expires": args.expires}
        if args.name:
            body["name"] = args.name
        doc = _ask(args, "POST", "/network/admin/invites", body)
        _print_invite(args, doc["token"], doc["invite"])
        return 0
    auth = _open(args)
    t = now()
    token, record = create_invite(auth.definition, t, name=args.name, groups=args.groups,
                                  uses=args.uses, ttl=args.expires,
                                  directory=args.directory or None)
    with auth.transaction() as ledger:
        add_invite(ledger, record)
    _print_invite(args, token.encode(), record.summary(t))
    return 0


def cmd_invites(args, now: Callable[[], float]) -> int:
    t = now()
    if args.action == "revoke":
        if not args.id:
            raise UsageError("which invite? `phantom network invites revoke ID`")
        if _remote(args):
            if not re.fullmatch(r"[a-z2-7]{16}", args.id):
                raise UsageError("%r is not an invite id (16 base32 characters)" % args.id)
            summary = _ask(args, "POST", "/network/admin/invites/%s/revoke" % args.id)["invite"]
        else:
            with _open(args).transaction() as ledger:
                summary = revoke_invite(ledger, args.id).summary(t)
        _out(args, "invite %s revoked" % summary["id"], summary)
        return 0
    if args.action is not None:
        raise UsageError("unknown action %r (only: revoke ID)" % args.action)
    if _remote(args):
        rows = _ask(args, "GET", "/network/admin/invites?all=1")["invites"]
    else:
        rows = [i.summary(t) for i in _open(args).read_ledger().invites()]
    if not args.all:
        rows = [r for r in rows if r["status"] == "active"]
    return _rows(args, rows, "no %sinvites" % ("" if args.all else "active "),
                 "%-16s  %-8s  %-9s  %-20s  %-16s  %s",
                 ("ID", "STATUS", "USED", "EXPIRES", "NAME", "GROUPS"),
                 lambda r: (r["id"], r["status"], "%d/%d" % (r["used"], r["uses"]),
                            _when(r["expires"]), r["name"] or "-", ",".join(r["groups"]) or "-"))


def _here_rows(args, t: float) -> list:
    """This member's own view (``--here``): the local phantomd's GET /status:
    itself, then every member it holds as a peer, with what only a member
    knows: online, the path (direct, relayed, none), the last handshake."""
    from phantom.http.client import Unreachable, request_json
    try:
        status, doc = request_json(args.api, "GET", "/status")
    except Unreachable as exc:
        raise UsageError("no phantomd answers at %s (%s): --here asks the local daemon"
                         % (args.api, exc)) from None
    if status != 200 or not isinstance(doc, dict):
        raise UsageError("%s answered %s to GET /status" % (args.api, status))
    me = doc.get("network")
    if not isinstance(me, dict):
        raise UsageError("the phantomd at %s is not a member of a network (no [network])" % args.api)
    addrs = me.get("addresses") or ["-", "-"]
    rows = [{"name": me.get("name"), "ipv4": addrs[0], "ipv6": addrs[-1],
             "groups": list(me.get("groups") or ()), "expires": me.get("certificate_expires"),
             "status": "member", "online": "self", "path": "-", "last_handshake": None}]
    for p in doc.get("peers") or ():
        if not isinstance(p, dict) or not p.get("member"):
            continue
        nets = [str(n) for n in p.get("allowed_ips") or ()]
        v4 = next((n.split("/")[0] for n in nets if "." in n), "-")
        v6 = next((n.split("/")[0] for n in nets if ":" in n), "-")
        up = p.get("state") == "established"
        rows.append({"name": p.get("name"), "ipv4": v4, "ipv6": v6,
                     "groups": list(p.get("groups") or ()),
                     "expires": p.get("certificate_expires"), "status": "member",
                     "online": "yes" if up else "no",
                     "path": (p.get("path") or "direct") if up else "none",
                     "last_handshake": p.get("last_handshake")})

    def by_address(r):
        try:
            return (0, int(ipaddress.ip_address(r["ipv4"])))
        except ValueError:
            return (1, 0)
    return rows[:1] + sorted(rows[1:], key=by_address)     # this node first, then by address


def _ago(t, now: float) -> str:
    return "-" if not t else "%ds ago" % max(0, int(now - t))


def cmd_members(args, now: Callable[[], float]) -> int:
    t = now()
    if args.here:
        rows = _here_rows(args, t)
        return _rows(args, rows, "no members", "%-20s  %-15s  %-26s  %-6s  %-8s  %-12s  %-20s  %s",
                     ("NAME", "IPV4", "IPV6", "ONLINE", "PATH", "HANDSHAKE", "EXPIRES", "GROUPS"),
                     lambda r: (r["name"], r["ipv4"], r["ipv6"], r["online"], r["path"],
                                _ago(r["last_handshake"], t),
                                _when(r["expires"]) if r["expires"] else "-",
                                ",".join(r["groups"]) or "-"))
    if _remote(args):
        rows = _ask(args, "GET", "/network/admin/members")["members"]
    else:
        rows = member_rows(_open(args).read_ledger().members(), t)
    if not args.all:
        rows = [r for r in rows if r["status"] == "member"]
    return _rows(args, rows, "no members", "%-20s  %-15s  %-28s  %-8s  %-20s  %s",
                 ("NAME", "IPV4", "IPV6", "STATUS", "EXPIRES", "GROUPS"),
                 lambda r: (r["name"], r["ipv4"], r["ipv6"], r["status"], _when(r["expires"]),
                            ",".join(r["groups"]) or "-"))


def cmd_remove(args, now: Callable[[], float]) -> int:
    import urllib.parse
    if _remote(args):
        doc = _ask(args, "POST", "/network/admin/members/%s/remove"
                   % urllib.parse.quote(args.who, safe=""))
        removal = doc["removal"]
    else:
        auth = _open(args)
        with auth.transaction() as ledger:
            r, _seq = remove(ledger, auth.definition, auth.admission, args.who, now())
        removal = r.doc
    _out(args, "%s removed: its certificates issued until %s are refused by every member that "
         "has the removal" % (args.who, _when(removal["time"])), removal)
    return 0


def cmd_rotate(args, now: Callable[[], float]) -> int:
    auth = _open(args)
    key_file = Path(args.authority_key) if args.authority_key else auth.path / AUTHORITY_KEY
    if not key_file.exists():
        raise UsageError("rotating needs the authority key, and %s has none: bring it back or "
                         "pass --authority-key FILE" % auth.path)
    authority = load_key(key_file)
    if authority.public != auth.definition.authority:
        raise UsageError("%s is not the authority key of network %s"
                         % (key_file, auth.definition.name))
    new = SigningKey.generate()
    t = now()
    with auth.transaction() as ledger:
        r = rotate(ledger, auth.definition, authority, new, t, lifetime=args.admission_lifetime)
        save_key(auth.path / ADMISSION_KEY, new)
        atomic_write(auth.path / DEFINITION, r.definition.encode() + b"\n", mode=0o644)
    _out(args, "network %s: definition seq %d lists only the new admission key; %d "
         "certificate(s) re-issued, %d removal(s) re-signed; the old admission key signs "
         "nothing any more" % (r.definition.name, r.definition.seq, r.reissued, r.resigned),
         {"seq": r.definition.seq, "reissued": r.reissued, "resigned": r.resigned,
          "admission": [a.to_doc() for a in r.definition.admission]})
    return 0


# --- the network policy (issue 21) -----------------------------------------------------------
_PROTO_WORDS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv4": 1, "icmpv6": 58}


def _flow(text: str) -> tuple:
    """"22" (TCP), "53/udp", "icmp", "47" -> (protocol number, port or None)."""
    port_text, sep, proto_text = text.strip().lower().partition("/")
    if not sep:
        if port_text in _PROTO_WORDS:
            return _PROTO_WORDS[port_text], None
        proto_text = "tcp"
    if proto_text in _PROTO_WORDS:
        proto = _PROTO_WORDS[proto_text]
    elif proto_text.isascii() and proto_text.isdigit() and int(proto_text) <= 255:
        proto = int(proto_text)
    else:
        raise UsageError("%r: write PORT[/PROTO] (22, 53/udp) or a protocol (icmp)" % text)
    if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
        raise UsageError("%r: the port must be 0-65535" % text)
    if proto not in (6, 17):
        raise UsageError("%r: only TCP and UDP have ports" % text)
    return proto, int(port_text)


def _policy_now(args):
    """The policy in force (a parsed Policy, verified locally) or None, and the members
    (name, key, groups) it is tested against."""
    from .join import current_policy
    from .policy import parse_policy
    if _remote(args):
        from phantom.http.client import Unreachable, request_json
        urls = list(args.directory or []) or list(_open(args).definition.directory)
        if not urls:
            raise UsageError("which directory? pass --directory URL (remote mode)")
        try:
            status, doc = request_json(urls[0], "GET", "/network/policy")
        except Unreachable as exc:
            raise UsageError("directory %s: %s" % (urls[0], exc)) from None
        if status == 404:
            return None
        if status >= 400:
            raise UsageError("directory %s refused: %s" % (urls[0], doc.get("error") if
                                                             isinstance(doc, dict) else status))
        return parse_policy(doc)
    return current_policy(_open(args).read_ledger())


def _members_now(args, now: float) -> list:
    from .policy import Identity
    if _remote(args):
        rows = _ask(args, "GET", "/network/admin/members")["members"]
        return [Identity(r["name"], base64.b64decode(r["key"]), tuple(r["groups"]))
                for r in rows if r["status"] == "member"]
    return [Identity(m.cert.name, m.cert.key, tuple(m.cert.groups))
            for m in _open(args).read_ledger().members()
            if m.removed is None and m.cert.not_after > now]


def _who_in(members: list, who: str):
    for m in members:
        if who in (m.name, b64(m.key)):
            return m
    raise UsageError("%r is not a current member (a name or a key)" % who)


def _rule_text(i: int, r: dict) -> str:
    ports = ",".join(r["ports"])
    return "rule %d: from %s to %s %s%s%s%s" % (
        i, ",".join(r["from"]), ",".join(r["to"]), r["proto"], (" " + ports) if ports else "",
        "" if r["action"] == "accept" else " " + r["action"],
        (" (%s)" % r["comment"]) if r.get("comment") else "")


def cmd_policy(args, now: Callable[[], float]) -> int:
    from .policy import MAX_SOURCE_SIZE, decide, parse_policy_source
    t = now()
    if args.action == "set":
        if len(args.args) != 1:
            raise UsageError("`phantom network policy set FILE`")
        path = Path(args.args[0])
        try:
            data = read_limited(path, MAX_SOURCE_SIZE)
        except OSError as exc:
            raise UsageError("%s: %s" % (path, exc.strerror or exc)) from None
        body = parse_policy_source(data)          # refused whole, naming the line
        if _remote(args):
            summary = _ask(args, "POST", "/network/admin/policy",
                           {"source": data.decode("utf-8")})
        else:
            from .join import set_policy
            auth = _open(args)
            with auth.transaction() as ledger:
                policy, _seq = set_policy(ledger, auth.definition, auth.admission, body, t)
            summary = {"seq": policy.seq, "issuer": b64(policy.issuer), "issued": policy.issued,
                       "rules": len(policy.body.rules), "default": policy.body.default}
        _out(args, "policy seq %d in force: %d rule%s, default %s (members apply it within "
             "seconds)" % (summary["seq"], summary["rules"], "" if summary["rules"] == 1
                           else "s", summary["default"]), summary)
        return 0
    policy = _policy_now(args)
    if args.action == "show":
        if args.args:
            raise UsageError("`phantom network policy show` takes no arguments")
        if policy is None:
            _out(args, "no policy: every member keeps its own [firewall]", None)
            return 0
        s = policy.summary()
        lines = ["policy seq %d, issued %s by %s, default %s" % (
            policy.seq, _when(policy.issued), s["issuer"], s["default"])]
        lines += ["  group %s = %s" % (g, ", ".join(m)) for g, m in s["groups"].items()]
        lines += ["  " + _rule_text(i, r) for i, r in enumerate(s["rules"], 1)]
        _out(args, "\n".join(lines), s)
        return 0
    if args.action == "test":
        if len(args.args) != 3:
            raise UsageError("`phantom network policy test SRC DST PORT[/PROTO]` "
                             "(e.g. alice srv1 22, alice srv1 53/udp, alice srv1 icmp)")
        proto, port = _flow(args.args[2])
        members = _members_now(args, t)
        src, dst = _who_in(members, args.args[0]), _who_in(members, args.args[1])
        if policy is None:
            action, rule, why = "accept", None, "no policy (each member's own [firewall])"
        else:
            action, index = decide(policy, src, dst, proto, port)
            rule = None if index < 0 else index + 1
            why = ("default %s" % policy.body.default if rule is None else
                   _rule_text(rule, policy.body.rules[index].to_doc()))
        _out(args, "%s  (%s)" % (action, why),
             {"action": action, "rule": rule, "src": src.name, "dst": dst.name,
              "proto": proto, "port": port, "seq": policy.seq if policy else 0})
        return 0
    raise UsageError("unknown action %r (show, set FILE, test SRC DST PORT)" % args.action)


_REMOTE = argparse.ArgumentParser(add_help=False)
_REMOTE.add_argument("--admin-token-file", metavar="FILE",
                     help="remote mode: ask the directory serving the network (--directory URL, "
                     "default the network's first), with this admin token")


def cmd_routes(args, now: Callable[[], float]) -> int:
    """Members' advertised and approved routes and exits (issue 22); approve, revoke."""
    import urllib.parse
    from . import routes as RT
    if args.action is not None:
        if args.action not in ("approve", "revoke") or args.who is None:
            raise UsageError("`phantom network routes [approve|revoke NAME [PREFIX...] [--exit]]`")
        if _remote(args):
            doc = _ask(args, "POST", "/network/admin/routes/%s/%s"
                       % (urllib.parse.quote(args.who, safe=""), args.action),
                       {"routes": list(args.prefixes), "exit": args.exit})
            c = doc["certificate"]
        else:
            auth = _open(args)
            with auth.transaction() as ledger:
                c = getattr(RT, args.action)(ledger, auth.definition, auth.admission, args.who,
                                             args.prefixes, args.exit, now()).certificate.summary()
        _out(args, "%s: approved routes %s%s (certificate serial %d; every member follows "
             "within seconds)" % (c["name"], ", ".join(c["routes"]) or "none",
                                  ", exit" if c["exit"] else "", c["serial"]), c)
        return 0
    if args.prefixes or args.exit:
        raise UsageError("`phantom network routes` lists; approve or revoke NAME to change")
    if _remote(args):
        rows = _ask(args, "GET", "/network/admin/routes")["routes"]
    else:
        auth = _open(args)
        ledger = auth.read_ledger()
        rows = RT.listing(ledger.members(), ledger.adverts(), auth.definition)

    def cells(r):
        standby = ["%s (standby behind %s)" % (x["prefix"], x["behind"]) for x in r["standby"]]
        return (r["name"], ",".join(r["advertised"] + (["exit"] if r["advertised_exit"] else []))
                or "-", ",".join(r["approved"] + (["exit"] if r["exit"] else [])) or "-",
                ",".join(r["primary"] + standby) or "-", ",".join(r["pending"]) or "-")
    return _rows(args, rows, "no member advertises routes or an exit",
                 "%-20s  %-36s  %-36s  %-40s  %s",
                 ("NAME", "ADVERTISED", "APPROVED", "ROUTED (PRIMARY / STANDBY)", "PENDING"),
                 cells)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=None,
                        help="the authority state directory (default $PHANTOM_NETWORK_DIR, else "
                        "%s)" % default_dir())
    common.add_argument("--json", action="store_true", help="machine-readable output")
    p = argparse.ArgumentParser(prog="phantom network",
                                description="a network: its authority, invites (issue 20)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def remote(name, help, directory="remote mode: the directory to ask"):
        """A command that can ask the network's directory (remote mode, _REMOTE)."""
        q = sub.add_parser(name, parents=[common, _REMOTE], help=help)
        q.add_argument("--directory", action="append", default=[], metavar="URL", help=directory)
        return q

    i = sub.add_parser("init", parents=[common], help="create a network (keys, signed definition)")
    i.add_argument("name", help="the network's name (a DNS label, e.g. corp)")
    i.add_argument("--domain", help="DNS domain of its members (default NAME.internal)")
    i.add_argument("--ipv4", help="IPv4 prefix (default: a random /16 of 100.64.0.0/10)")
    i.add_argument("--ipv6", help="IPv6 ULA /48 (default: random, RFC 4193)")
    i.add_argument("--directory", action="append", default=[], metavar="URL",
                   help="a directory URL members enrol and watch at (repeatable)")
    i.add_argument("--rendezvous", action="append", default=[], type=server,
                   metavar="KEY@HOST:PORT", help="a rendezvous server (repeatable)")
    i.add_argument("--relay", action="append", default=[], type=server,
                   metavar="KEY@HOST:PORT", help="a relay (repeatable)")
    i.add_argument("--cert-lifetime", type=duration, default=DEFAULT_CERT_LIFETIME,
                   metavar="DURATION", help="how long a certificate lasts (default 30d)")
    i.set_defaults(func=cmd_init)
    sub.add_parser("show", parents=[common], help="the network's definition").set_defaults(
        func=cmd_show)
    v = remote("invite", help="make an invite token for `phantom join`",
               directory="directory URL(s) in the token (default: the network's)")
    v.add_argument("--name", help="the member's name (then the invite is for one use)")
    v.add_argument("--groups", type=groups, default=[], help="groups, comma-separated")
    v.add_argument("--uses", type=int, default=1, help="how many joins it allows (default 1)")
    v.add_argument("--expires", type=duration, default=DEFAULT_INVITE_TTL, metavar="DURATION",
                   help="lifetime (default 24h)")
    v.set_defaults(func=cmd_invite)
    s = remote("invites", help="list invites; `invites revoke ID`")
    s.add_argument("action", nargs="?", help="revoke")
    s.add_argument("id", nargs="?", help="the invite's id")
    s.add_argument("--all", action="store_true", help="used, expired and revoked ones too")
    s.set_defaults(func=cmd_invites)
    m = remote("members", help="the network's members")
    m.add_argument("--all", action="store_true", help="removed and expired ones too")
    m.add_argument("--here", action="store_true",
                   help="this member's own view from its phantomd (online, path, last handshake)")
    m.add_argument("--api", default="http://127.0.0.1:4567", metavar="URL",
                   help="with --here: the local phantomd's API (default %(default)s)")
    m.set_defaults(func=cmd_members)
    x = remote("remove", help="remove a member (by name or key): a signed removal")
    x.add_argument("who", metavar="NAME|KEY")
    x.set_defaults(func=cmd_remove)
    r = sub.add_parser("rotate", parents=[common],
                       help="replace the admission key (a stolen directory host): needs the "
                       "authority key")
    r.add_argument("--authority-key", metavar="FILE",
                   help="the authority key, if it is no longer in the directory (offline)")
    r.add_argument("--admission-lifetime", type=duration, default=DEFAULT_ADMISSION_LIFETIME,
                   metavar="DURATION", help="how long the new admission key lasts (default 365d)")
    r.set_defaults(func=cmd_rotate)
    y = remote("policy", help="the network policy: show | set FILE | test SRC DST PORT[/PROTO]")
    y.add_argument("action", choices=["show", "set", "test"])
    y.add_argument("args", nargs="*", help="set: FILE (TOML or JSON); test: SRC DST PORT[/PROTO]")
    y.set_defaults(func=cmd_policy)
    t = remote("routes", help="members' advertised and approved subnet routes and exits; "
                       "approve|revoke NAME [PREFIX...] [--exit]")
    t.add_argument("action", nargs="?", help="approve or revoke (none: list)")
    t.add_argument("who", nargs="?", metavar="NAME", help="the member")
    t.add_argument("prefixes", nargs="*", metavar="PREFIX",
                   help="prefixes (none and no --exit: everything advertised / approved)")
    t.add_argument("--exit", action="store_true", help="the exit node role")
    t.set_defaults(func=cmd_routes)
    return p


def main(argv: Optional[list] = None, now: Callable[[], float] = time.time) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dir is None:
        args.dir = default_dir()
    try:
        return args.func(args, now)
    except (NetworkError, UsageError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
