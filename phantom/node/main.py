"""The ``phantomd`` command: flags and the config file, the private key,
the user to run as, the privileged opens and the lock-down, then the daemon
on the uvloop loop (startup.py has the steps).  Exit status: 0 stopped, 2 bad
config or key (nothing opened), 1 a runtime failure (a port in use, the data
plane stopped)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from .config import ConfigError, parse_daemon_args
from .daemon import EXIT_CONFIG, EXIT_RUNTIME, Daemon

log = logging.getLogger("phantom.daemon")


def main(argv=None) -> int:
    from ..keys import load_or_create_private_key, load_private_key
    from ..logsetup import setup_logging, register_secret
    try:
        settings = parse_daemon_args(argv)
    except ConfigError as exc:
        print("phantomd: config error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    log.info("phantomd starting (pid %d)", os.getpid())
    from .config import config_warnings
    for warning in config_warnings(settings):
        log.warning("config: %s", warning)
    try:
        if settings.private_key_explicit:
            key = load_private_key(settings.private_key_file)
        else:
            key = load_or_create_private_key(settings.private_key_file)
    except (ConfigError, ValueError, OSError) as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    register_secret(key)
    import uvloop
    from ..privileges import PrivilegeError, lock_down, resolve_user
    try:
        from .config import check_own_key
        from ..keys import public_key
        check_own_key(settings, public_key(key))
        daemon = Daemon(settings, key)
    except ConfigError as exc:
        print("phantomd: config error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        daemon.drop_to = resolve_user(settings.user)
    except PrivilegeError as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    from . import sdnotify
    daemon.notifier = sdnotify.from_environment()   # $NOTIFY_SOCKET, connected while still root
    try:
        daemon.open_privileged()
        if daemon.drop_to is not None:
            lock_down()                  # single-threaded: before the loop and any thread
    except OSError as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
        if daemon.priv is not None:
            daemon.priv.close()
        return EXIT_RUNTIME
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(daemon.serve())
    except ConfigError as exc:
        print("phantomd: config error: %s" % exc, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print("phantomd: %s" % exc, file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        if daemon.priv is not None:
            daemon.priv.close()          # also when serve() failed: the helper cleans up first
    if daemon.failure is not None:
        print("phantomd: the data plane stopped: %s" % daemon.failure, file=sys.stderr)
    return daemon.exit_code


if __name__ == "__main__":
    sys.exit(main())
