"""``phantom wg ...``: move WireGuard setups to phantomd and back.

    phantom wg import wg0.conf [--out phantom.toml] [--device NAME] [--force]
    phantom wg export --config phantom.toml [PEER] [--endpoint IP:PORT]
                      [--peer-private-key FILE] [--out FILE]
    phantom wg genpsk                                   like `wg genpsk`

See :mod:`phantom.protocols.wireguard.wgquick` for what is converted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ... import crypto
from ..config import ConfigError, parse_endpoint
from ..keys import KeyFileError, load_private_key, public_key, write_secret_file
from ...protocols.wireguard.keys import genpsk
from ...protocols.wireguard.wgquick import (WgConfError, export_for_peer, export_interface, load_phantom,
                      parse_wg_quick, to_phantom_toml)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phantom wg", description="WireGuard config tools.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    i = sub.add_parser("import", help="turn a wg-quick config into a phantom.toml")
    i.add_argument("wgconf", help="the wg-quick file, e.g. /etc/wireguard/wg0.conf")
    i.add_argument("--out", default="phantom.toml", metavar="FILE",
                   help="the phantom.toml to write (default ./phantom.toml); keys go next to it")
    i.add_argument("--device", metavar="NAME", help="TUN device name (default: the file's name, e.g. wg0)")
    i.add_argument("--force", action="store_true", help="overwrite existing files")
    e = sub.add_parser("export", help="a wg-quick config from a phantom.toml")
    e.add_argument("peer", nargs="?", help="a WireGuard peer's name: write the config it uses to "
                   "reach us (default: our own interface, the reverse of import)")
    e.add_argument("--config", "-c", required=True, metavar="PATH", help="the phantom.toml")
    e.add_argument("--endpoint", metavar="IP:PORT", help="where the peer reaches us "
                   "(default: the first of [interface] endpoints)")
    e.add_argument("--peer-private-key", metavar="FILE", help="fill in the peer's PrivateKey")
    e.add_argument("--out", metavar="FILE", help="write here (mode 0600) instead of standard output")
    sub.add_parser("genpsk", help="print a new preshared key")
    return p


def _write(path: Path, text: str, force: bool) -> None:
    write_secret_file(path, text.encode(), overwrite=force)


def cmd_import(args) -> int:
    src = Path(args.wgconf)
    try:
        conf = parse_wg_quick(src.read_text())
    except OSError as exc:
        raise WgConfError("cannot read %s: %s" % (src, exc.strerror or exc)) from None
    device = args.device or src.stem[:15] or "wg0"
    out = Path(args.out)
    if out.exists() and not args.force:
        raise WgConfError("%s exists (use --force to overwrite)" % out)
    key_dir = out.resolve().parent
    try:
        text = to_phantom_toml(conf, device=device, key_dir=key_dir,
                               write_secret=lambda p, t: _write(p, t, args.force))
    except FileExistsError as exc:
        raise WgConfError("%s exists (use --force to overwrite)" % (exc.filename or "a key file")) from None
    finally:
        if conf.private_key is not None:
            crypto.memzero(conf.private_key)
    out.write_text(text)
    for w in conf.warnings:
        print("warning: %s" % w, file=sys.stderr)
    print("wrote %s (%d WireGuard peer%s); start it with: phantomd --config %s"
          % (out, len(conf.peers), "" if len(conf.peers) == 1 else "s", out), file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    settings = load_phantom(args.config)
    settings.config_path = Path(args.config)
    if settings.private_key_file is None:
        settings.private_key_file = settings.state_dir / "private.key"
    priv = load_private_key(settings.private_key_file)
    try:
        if args.peer:
            ep = parse_endpoint(args.endpoint, "--endpoint") if args.endpoint else None
            peer_priv = load_private_key(args.peer_private_key) if args.peer_private_key else None
            text, notes = export_for_peer(settings, public_key(priv), args.peer, endpoint=ep,
                                          peer_private_key=peer_priv)
        else:
            text, notes = export_interface(settings, priv)
    finally:
        crypto.memzero(priv)
    if args.out:
        write_secret_file(Path(args.out), text.encode(), overwrite=True)
    else:
        sys.stdout.write(text)
    for n in notes:
        print("note: %s" % n, file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "import":
            return cmd_import(args)
        if args.action == "export":
            return cmd_export(args)
        print(genpsk())
        return 0
    except (WgConfError, ConfigError, KeyFileError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
