"""sd_notify(3) for phantomd, without libsystemd: tell the service manager
(``Type=notify`` in examples/phantomd@.service) when the daemon is ready,
what it is doing, and that it is stopping.

systemd passes ``$NOTIFY_SOCKET``: a Unix datagram socket path, or ``@name``
for one in the abstract namespace.  :func:`from_environment` connects to it
once, at start, while phantomd is still root (connecting checks the path's
permissions; later sends on the connected socket do not), and removes the
variable so that no helper process notifies in our name.  Sends never fail
the daemon: a lost notification is logged at debug level.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

log = logging.getLogger("phantom.sdnotify")


class Notifier:
    """A connected notification socket; :meth:`send` sends one datagram."""

    def __init__(self, sock: socket.socket, address: str):
        self._sock = sock
        self.address = address

    def send(self, *assignments: str) -> bool:
        """Send ``VAR=value`` lines (e.g. "READY=1", "STATUS=...") as one datagram."""
        try:
            self._sock.send("\n".join(assignments).encode("utf-8", "replace"))
            return True
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False

    def close(self) -> None:
        self._sock.close()


def from_environment(environ=None) -> Optional[Notifier]:
    """A Notifier for ``$NOTIFY_SOCKET``, or None when it is unset or unusable
    (then the reason is logged: the daemon runs on without notifying)."""
    environ = os.environ if environ is None else environ
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    environ.pop("NOTIFY_SOCKET", None)
    if path.startswith("@"):
        address = "\0" + path[1:]               # the abstract namespace
    elif path.startswith("/"):
        address = path
    else:
        log.warning("NOTIFY_SOCKET=%r: not a Unix socket path; no readiness notification", path)
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        log.warning("NOTIFY_SOCKET %s: cannot connect (%s); no readiness notification",
                    path, exc.strerror or exc)
        return None
    return Notifier(sock, path)
