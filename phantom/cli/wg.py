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

from .. import crypto
from ..errors import ConfigError
from ..syntax import parse_peer_endpoint
from ..keys import KeyFileError, encode_key, load_private_key, public_key, write_secret_file
from ..protocols.wireguard.keys import genpsk
from ..node.config import Settings, read_config_file, settings_from_mapping
from ..protocols.wireguard.wgquick import (WgConfError, export_for_peer, export_interface, notes,
                                           parse_wg_quick, to_phantom_toml, unreachable)


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
    e.add_argument("--endpoint", metavar="HOST:PORT", help="where the peer reaches us "
                   "(default: the first of [interface] endpoints)")
    e.add_argument("--peer-private-key", metavar="FILE", help="fill in the peer's PrivateKey")
    e.add_argument("--out", metavar="FILE", help="write here (mode 0600) instead of standard output")
    sub.add_parser("genpsk", help="print a new preshared key")
    return p


def _write(path: Path, text: str, force: bool) -> None:
    write_secret_file(path, text.encode(), overwrite=force)


class UsageError(Exception):
    """A bad argument: exit status 2, like argparse's."""


def _check_out(out: Path) -> None:
    """--out must name a file in a directory that exists (no traceback later)."""
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise UsageError("--out %s: is a directory; name the file to write, e.g. %s"
                         % (out, out / "phantom.toml"))
    if not parent.exists():
        raise UsageError("--out %s: the directory %s does not exist (create it first: "
                         "mkdir -p %s)" % (out, parent, parent))
    if not parent.is_dir():
        raise UsageError("--out %s: %s is not a directory" % (out, parent))


def cmd_import(args) -> int:
    src = Path(args.wgconf)
    try:
        conf = parse_wg_quick(src.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise WgConfError("cannot read %s: %s" % (src, getattr(exc, "strerror", None) or exc)) from None
    device = args.device or src.stem[:15] or "wg0"
    out = Path(args.out)
    try:
        _check_out(out)
        if out.exists() and not args.force:
            raise WgConfError("%s exists (use --force to overwrite)" % out)
        key_dir = out.resolve().parent
        try:
            text = to_phantom_toml(conf, device=device, key_dir=key_dir,
                                   write_secret=lambda p, t: _write(p, t, args.force))
        except FileExistsError as exc:
            raise WgConfError("%s exists (use --force to overwrite)" % (exc.filename or "a key file")) from None
        out.write_text(text)
    except OSError as exc:              # permissions, a full disk, ...: said, no traceback
        raise WgConfError("cannot write %s: %s" % (getattr(exc, "filename", None) or out,
                                                    exc.strerror or exc)) from None
    finally:
        if conf.private_key is not None:
            crypto.memzero(conf.private_key)
    for w in notes(conf, device):
        print("warning: %s" % w, file=sys.stderr)
    print("wrote %s (%d WireGuard peer%s); start it with: phantomd --config %s"
          % (out, len(conf.peers), "" if len(conf.peers) == 1 else "s", out), file=sys.stderr)
    lost = unreachable(conf)
    if lost:
        # wg-quick would start, and the tunnel would never come up: say so, and fail
        print("error: %s can never connect: %s no Endpoint and [Interface] has no ListenPort, "
              "so neither side knows where to reach the other; add Endpoint = HOST:PORT to the "
              "[Peer] or ListenPort = N to [Interface] and import again with --force"
              % (", ".join("peer %s" % (p.name or encode_key(p.public_key)) for p in lost),
                 "it has" if len(lost) == 1 else "they have"), file=sys.stderr)
        return 1
    return 0


def load_phantom(path) -> Settings:
    """A phantom.toml's settings, as phantomd reads them."""
    path = Path(path)
    return settings_from_mapping(read_config_file(path), base=path.resolve().parent)


def cmd_export(args) -> int:
    if args.out:
        _check_out(Path(args.out))
    settings = load_phantom(args.config)
    settings.config_path = Path(args.config)
    if settings.private_key_file is None:
        settings.private_key_file = settings.state_dir / "private.key"
    priv = load_private_key(settings.private_key_file)
    try:
        if args.peer:
            ep = parse_peer_endpoint(args.endpoint, "--endpoint") if args.endpoint else None
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
    except UsageError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    except (WgConfError, ConfigError, KeyFileError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
