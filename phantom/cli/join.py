"""``phantom join TOKEN``: enrol this machine in a network (issue 20).

    phantom join TOKEN [--name N] [--state-dir D] [--config F] [--timeout S] [--json]
                       [--no-start] [--start-timeout S]

1. makes (or reuses) the node key: the config's ``private_key_file``, else
   ``<state_dir>/private.key`` (phantomd's own default);
2. builds the join request (the invite's id and secret, the node's key and a
   signature with it: proof of possession) and POSTs it to the token's
   directory URL(s), in order, until one answers;
3. checks the answer: the definition must be signed by the authority the
   token names, the certificate must be for this key;
4. writes ``<state_dir>/network/definition.json`` and ``certificate.json``
   (0600, the directory 0700) and a ``[network]`` section in the config (a new
   config 0644 in a 0711 state directory: phantomd re-reads it on reload as its
   unprivileged user)
   (made with ``[interface]`` addresses from the certificate when it does not
   exist);
5. starts ``phantomd --config F`` detached (its output in
   ``<state_dir>/phantomd.log``) and waits until it is ready: it makes the
   network's members its peers by itself (phantom/node/membership.py).
   ``--no-start`` prints the command instead; a daemon already answering at
   the config's API address is left alone (it needs a restart to act on
   ``[network]``).

A refusal (used, expired or revoked invite, name taken, ...) is
``error: <the directory's sentence>`` and exit 1; a network failure names
every URL that failed and why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from phantom.http.client import DEFAULT_TIMEOUT, MAX_ANSWER, Unreachable, request_json  # noqa: F401
from phantom.network.canonical import b64
from phantom.network.errors import NetworkError
from phantom.network.invite import parse_token
from phantom.network.join import accept_join_answer, make_join_request

BUSY_RETRIES = 5                      # a 503 (the store's conflict, a busy front end) or 429


class JoinFailed(Exception):
    """Printed as ``error: <message>``; exit status 1."""


def ask_directories(urls, method: str, path: str, body: Any = None, *,
                    token: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
                    sleep=time.sleep) -> tuple:
    """(url, status, body) of the first directory that answers; a 503 or 429
    is waited out and asked again (a few times); JoinFailed naming every
    URL that failed when none answers."""
    failures = []
    for url in urls:
        for attempt in range(BUSY_RETRIES):
            try:
                status, doc = request_json(url, method, path, body, token=token, timeout=timeout)
            except Unreachable as exc:
                failures.append("%s: %s" % (url, exc))
                break
            if status in (429, 503) and attempt < BUSY_RETRIES - 1:
                wait = doc.get("retry_after", 1) if isinstance(doc, dict) else 1
                sleep(min(5.0, max(0.2, float(wait) if isinstance(wait, (int, float)) else 1.0)))
                continue
            return url, status, doc
    raise JoinFailed("no directory answered: " + "; ".join(failures))


def _refusal(doc: Any, status: int) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"][:500]
    return "HTTP %d" % status


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    from phantom.network.keys import atomic_write
    atomic_write(path, data, mode=mode)


def _toml_str(value: str) -> str:
    return json.dumps(value)          # a TOML basic string for these ASCII values


def network_section(fingerprint: str, name: str, directory, state: Path) -> str:
    return ("[network]                       # written by `phantom join`\n"
            "network = %s\nname = %s\ndirectory = [%s]\nstate = %s\n"
            % (_toml_str(fingerprint), _toml_str(name),
               ", ".join(_toml_str(u) for u in directory), _toml_str(str(state))))


# The config holds no secret (the key is a file of its own, 0600), and phantomd
# re-reads it on `phantom reload` as its unprivileged user (docs/operations.md):
# readable by everyone, in a state directory others may traverse but not list.
CONFIG_MODE = 0o644
STATE_DIR_MODE = 0o711


def write_config(path: Path, section: str, interface: Optional[str]) -> None:
    """Put ``section`` in the TOML file ``path``: replacing its ``[network]``
    table, or appended; a new file gets ``interface`` first."""
    if path.exists():
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        out, skipping = [], False
        for line in lines:
            header = re.match(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?", line)
            if header:
                skipping = header.group(1) == "network"
            if not skipping:
                out.append(line)
        text = "".join(out)
        if text and not text.endswith("\n"):
            text += "\n"
        text += ("\n" if text.strip() else "") + section
        mode = path.stat().st_mode & 0o777
    else:
        text = (interface or "") + "\n" + section
        mode = CONFIG_MODE
    write_private(path, text.encode(), mode)


def cmd_join(args, now=time.time) -> int:
    from phantom.keys import load_or_create_private_key
    from phantom.directory.records import NodeSigner
    from phantom.node.config import default_state_dir, read_config_file, settings_from_mapping

    token = parse_token(args.token.strip())
    config = Path(args.config).absolute() if args.config else None
    settings = None
    if config is not None and config.exists():
        settings = settings_from_mapping(read_config_file(config), config.parent)
    state_dir = Path(args.state_dir).absolute() if args.state_dir else (
        settings.state_dir if settings is not None else default_state_dir())
    if config is None:
        config = state_dir / "phantom.toml"
        if config.exists():
            settings = settings_from_mapping(read_config_file(config), config.parent)
    key_file = (settings.private_key_file if settings is not None and
                settings.private_key_file is not None else state_dir / "private.key")
    state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    if config.parent == state_dir:
        # phantomd reads the config there after dropping its privileges (reload)
        os.chmod(state_dir, os.stat(state_dir).st_mode & 0o777 | 0o011)
    private = load_or_create_private_key(key_file)
    signer = NodeSigner(private)
    public = bytes(signer.public_key)
    try:
        request = make_join_request(token, public, signer.signing_key, signer.sign, now(),
                                    name=args.name)
    finally:
        signer.wipe()
        from phantom import crypto
        crypto.memzero(private)
    urls = list(args.directory or token.directory)
    if not urls:
        raise JoinFailed("the token names no directory URL: pass --directory URL")
    url, status, doc = ask_directories(urls, "POST", "/network/join", request,
                                       timeout=args.timeout)
    if status != 200:
        raise JoinFailed("%s refused the join: %s" % (url, _refusal(doc, status)))
    try:
        definition, cert = accept_join_answer(doc, token.network, public, now())
    except NetworkError as exc:
        raise JoinFailed("%s answered with something this machine cannot accept: %s"
                         % (url, exc)) from None
    netdir = state_dir / "network"
    netdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(netdir, 0o700)
    write_private(netdir / "definition.json", definition.encode() + b"\n")
    # exactly the certificate's canonical bytes (no final newline): a
    # certificate has one spelling, and the verifier refuses any other
    write_private(netdir / "certificate.json", cert.encode())
    interface = ("[interface]\nprivate_key_file = %s\nstate_dir = %s\nmode = \"tun\"\n"
                 "addresses = [%s, %s]\n"
                 % (_toml_str(str(key_file)), _toml_str(str(state_dir)),
                    _toml_str("%s/%d" % (cert.ipv4, definition.ipv4.prefixlen)),
                    _toml_str("%s/%d" % (cert.ipv6, definition.ipv6.prefixlen))))
    write_config(config, network_section(definition.fingerprint, definition.name,
                                         [url] + [u for u in urls if u != url], netdir),
                 interface)
    summary = {"network": definition.name, "fingerprint": definition.fingerprint,
               "name": cert.name, "ipv4": str(cert.ipv4), "ipv6": str(cert.ipv6),
               "groups": list(cert.groups), "key": b64(public), "expires": cert.not_after,
               "directory": url, "config": str(config), "state": str(netdir)}
    if not args.json:
        print("joined %s as %s: %s, %s%s (certificate until %s)" % (
            definition.name, cert.name, cert.ipv4, cert.ipv6,
            (", groups " + ",".join(cert.groups)) if cert.groups else "",
            time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(cert.not_after))))
        print("wrote %s/{definition,certificate}.json and the [network] section of %s"
              % (netdir, config))
    if args.no_start:
        if args.json:
            print(json.dumps(summary, indent=2, sort_keys=True))
        else:
            print("start the daemon: phantomd --config %s" % config)
        return 0
    try:
        summary["daemon"] = start_daemon(config, state_dir, args.start_timeout)
    except JoinFailed as exc:
        if args.json:
            print(json.dumps(summary, indent=2, sort_keys=True))
        raise JoinFailed("joined %s as %s, but phantomd did not start: %s; start it with: "
                         "phantomd --config %s" % (definition.name, cert.name, exc, config)) \
            from None
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        d = summary["daemon"]
        if d.get("already"):
            print("a phantomd already answers at %s: restart it so that it acts on [network]"
                  % d["api"])
        else:
            print("phantomd started (pid %d, log %s): the members are its peers now; stop it "
                  "with `kill %d`, or run it as a service (examples/phantomd@.service)"
                  % (d["pid"], d["log"], d["pid"]))
    return 0


def start_daemon(config: Path, state_dir: Path, timeout: float) -> dict:
    """Start ``phantomd --config CONFIG`` detached (its own session, stdin from
    /dev/null, output appended to STATE_DIR/phantomd.log) and wait until its
    API says it is ready; JoinFailed with the log's last lines when it exits
    or does not get ready within ``timeout``.  A daemon already answering at
    the config's API address is left alone (``already``)."""
    import shutil
    import subprocess
    from phantom.cli.main import ApiClient, CliError, not_ready
    from phantom.node.config import read_config_file, settings_from_mapping
    s = settings_from_mapping(read_config_file(config), config.parent)
    api = "http://%s:%d" % (s.http_listen if ":" not in s.http_listen else "[%s]" % s.http_listen,
                            s.http_port) if s.http_port else None
    client = ApiClient(api, str(s.http_socket) if s.http_socket else None, str(s.token_file),
                       timeout=1.0)
    try:
        client.request("GET", "/status")
        return {"already": True, "api": client.where()}
    except CliError:
        pass
    exe = shutil.which("phantomd") or os.path.join(os.path.dirname(sys.executable), "phantomd")
    if not os.path.exists(exe):
        raise JoinFailed("no phantomd program found (PATH, or next to %s)" % sys.executable)
    log_path = state_dir / "phantomd.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen([exe, "--config", str(config)], stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=fd, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    why = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise JoinFailed("it exited with status %d: %s" % (proc.returncode,
                                                                _tail(log_path)))
        try:
            why = not_ready(client.request("GET", "/status"))
        except CliError as exc:
            why = str(exc)
        if why is None:
            return {"pid": proc.pid, "log": str(log_path), "api": client.where()}
        time.sleep(0.2)
    raise JoinFailed("not ready after %g s (%s; pid %d still runs): %s"
                     % (timeout, why, proc.pid, _tail(log_path)))


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phantom join",
                                description="enrol this machine in a network with an invite "
                                "token (`phantom network invite` prints one)")
    p.add_argument("token", help="the invite token (phantom1....)")
    p.add_argument("--name", help="this member's name (a DNS label), unless the invite names it")
    p.add_argument("--state-dir", metavar="DIR",
                   help="phantomd's state directory (default: the config's, else "
                   "/var/lib/phantom for root, ./.phantom otherwise)")
    p.add_argument("--config", metavar="FILE",
                   help="the phantomd config to write [network] into (default "
                   "STATE_DIR/phantom.toml; made if missing)")
    p.add_argument("--directory", action="append", metavar="URL",
                   help="ask this directory instead of the token's (repeatable)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="per request (default %g)" % DEFAULT_TIMEOUT)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-start", action="store_true",
                   help="do not start phantomd (print the command instead)")
    p.add_argument("--start-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the started phantomd to be ready (default 30)")
    return p


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    from phantom.errors import ConfigError, PhantomError
    try:
        return cmd_join(args)
    except (JoinFailed, NetworkError, PhantomError, ConfigError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
