"""phantomd's command line: flags on top of the config file."""

from __future__ import annotations

import argparse
from pathlib import Path

from phantom.constants import DEFAULT_HTTP_PORT, DEFAULT_MTU, DEFAULT_TEST_PORT, DEFAULT_UDP_PORT
from phantom.syntax import parse_endpoint, parse_interface_address, parse_port

from .document import default_mode, finish, settings_from_mapping
from .settings import DEFAULT_HTTP_LISTEN, DEFAULT_MODE, Settings
from .values import (parse_ciphers, parse_device_name, parse_directory, parse_http_listen, parse_log_level,
                     parse_mode, parse_mtu, parse_path, parse_user, read_config_file)


def build_daemon_parser() -> argparse.ArgumentParser:
    """phantomd's flags.  Defaults are None so that only given flags override the file."""
    p = argparse.ArgumentParser(
        prog="phantomd",
        description="Phantom tunnel daemon. Flags override the --config file.")
    a = p.add_argument
    a("--config", "-c", metavar="PATH", help="TOML config file (see examples/phantom.toml)")
    a("-p", "--http-port", metavar="PORT", help="HTTP command API port (default %d)" % DEFAULT_HTTP_PORT)
    a("-u", "--udp-port", metavar="PORT",
      help="UDP tunnel port, [interface] listen_port (default %d; 0 = any)" % DEFAULT_UDP_PORT)
    a("-t", "--test-port", metavar="PORT", help="UDP test port (default %d)" % DEFAULT_TEST_PORT)
    a("--mode", metavar="MODE", help="tun, tap or test (default tun when addresses are given, "
                                     "else %s)" % DEFAULT_MODE.value)
    a("--device", metavar="NAME", help="TUN/TAP device name")
    a("--address", metavar="CIDR", action="append",
      help="interface address, e.g. 10.9.0.1/24 (repeatable; replaces the file's list)")
    a("--private-key", metavar="FILE", help="private key file (mode 0600)")
    a("--fast", action="store_true", default=None, help="use the Cython fast path")
    a("--log-level", metavar="LEVEL", help="debug, info, warning, error or critical (default info)")
    a("--user", metavar="NAME", help="unprivileged user to switch to after setup")
    a("--state-dir", metavar="DIR",
      help="API token and generated key live here (default /var/lib/phantom as root, else ./.phantom)")
    a("--http-listen", metavar="ADDR", help="API listen address (default %s)" % DEFAULT_HTTP_LISTEN)
    a("--http-socket", metavar="PATH", help="also serve the API on this Unix socket (mode 0600)")
    a("--metrics-listen", metavar="IP:PORT",
      help="also serve GET /metrics alone on this address (e.g. 127.0.0.1:9586)")
    a("--directory", metavar="URL[,URL]|dht", help="key directory (or several, comma-separated) to publish to and resolve peers from, or \"dht\" for the mainline DHT")
    a("--mtu", metavar="N", help="tunnel MTU (default %d)" % DEFAULT_MTU)
    a("--ciphers", metavar="LIST",
      help="Phantom transport suites allowed, comma-separated: aegis256, secretbox "
           "(default: aegis256 where the CPU has AES instructions, and secretbox)")
    return p


def parse_daemon_args(argv=None) -> Settings:
    """Parse phantomd's command line (and its --config file) into Settings.

    Malformed flags exit through argparse (status 2); every other problem
    raises ConfigError.
    """
    return load_settings(build_daemon_parser().parse_args(argv))


def load_settings(args: argparse.Namespace) -> Settings:
    """Read ``args.config`` (if any), then apply the flags that were given."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    if get("config"):
        path = Path(get("config")).expanduser()
        s = settings_from_mapping(read_config_file(path), base=path.resolve().parent)
        s.config_path = path
    else:
        s = Settings()
    mtu_key = "interface.mtu"

    if get("http_port") is not None:
        s.http_port = parse_port(get("http_port"), "--http-port", allow_zero=True)
    if get("udp_port") is not None:
        s.listen_port = parse_port(get("udp_port"), "--udp-port", allow_zero=True)
    if get("test_port") is not None:
        s.test_port = parse_port(get("test_port"), "--test-port")
    if get("mode") is not None:
        s.mode = parse_mode(get("mode"), "--mode")
        s.mode_explicit = True
    if get("device") is not None:
        s.device = parse_device_name(get("device"), "--device")
    if get("address"):
        s.addresses = [parse_interface_address(v, "--address") for v in get("address")]
    if get("private_key") is not None:
        s.private_key_file = parse_path(get("private_key"), "--private-key", Path.cwd())
        s.private_key_explicit = True
    if get("fast"):
        s.fast = True
    if get("log_level") is not None:
        s.log_level = parse_log_level(get("log_level"), "--log-level")
    if get("user") is not None:
        s.user = parse_user(get("user"), "--user")
    if get("state_dir") is not None:
        s.state_dir = parse_path(get("state_dir"), "--state-dir", Path.cwd())
    if get("http_listen") is not None:
        s.http_listen = parse_http_listen(get("http_listen"), "--http-listen")
    if get("http_socket") is not None:
        s.http_socket = parse_path(get("http_socket"), "--http-socket", Path.cwd())
    if get("directory") is not None:
        s.directory = parse_directory(get("directory"), "--directory")
    if get("metrics_listen") is not None:
        s.metrics_listen = parse_endpoint(get("metrics_listen"), "--metrics-listen")
    if get("mtu") is not None:
        s.mtu = parse_mtu(get("mtu"), "--mtu")
        mtu_key = "--mtu"
    if get("ciphers") is not None:
        s.ciphers = parse_ciphers(get("ciphers"), "--ciphers")
    default_mode(s)                # --address without a mode anywhere: tun
    return finish(s, mtu_key)
