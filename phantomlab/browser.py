"""Headless Chromium for the dashboard tests, driven by Selenium, offline.

Debian's ``chromium`` and ``chromium-driver`` packages (setup.sh) are used
as they are: Selenium is given both paths, so Selenium Manager never looks
for (or downloads) a browser or a driver.  The browser runs in the root
network namespace; the daemon under test serves its API on a Unix socket
(files know no namespaces) and :class:`UnixProxy` forwards a loopback TCP
port to it, which is also how docs/operations.md proxies the dashboard.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Optional

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def missing() -> Optional[str]:
    """Why the browser tests cannot run, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return "%s is missing (apt-get install %s)" % (path, pkg)
    return None


def make_driver(profile_dir: Path, width: int = 1400, height: int = 1000):
    os.environ["SE_OFFLINE"] = "true"            # Selenium Manager: never fetch anything
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--no-default-browser-check", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--metrics-recording-only", "--disable-default-apps",
              "--window-size=%d,%d" % (width, height), "--user-data-dir=%s" % profile_dir):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile_dir / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    return driver


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


class _Forwarder:
    """Accept on 127.0.0.1:<port>, connect each client with ``connect()``,
    pump bytes both ways (threads).  ``close()`` stops it."""

    def __init__(self, connect):
        self._connect = connect
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d/" % self.port
        self._stop = threading.Event()
        self._socks: list = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="proxy-accept")
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = self._connect()
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(2)
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


class UnixProxy(_Forwarder):
    """127.0.0.1:<port> -> the daemon's API Unix socket."""

    def __init__(self, path):
        path = str(path)

        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            s.settimeout(None)
            return s
        super().__init__(connect)


class NetnsProxy(_Forwarder):
    """127.0.0.1:<port> -> host:port inside a network namespace."""

    def __init__(self, ns_name: str, host: str = "127.0.0.1", port: int = 4567):
        from phantomlab.namespaces import socket_in

        def connect():
            s = socket_in(ns_name, socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect((host, port))
            s.settimeout(None)
            return s
        super().__init__(connect)


def has_chromium() -> bool:
    return missing() is None and shutil.which("chromium") is not None
