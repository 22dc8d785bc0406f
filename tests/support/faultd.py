"""phantomd with a test-only fault hook: ``python tests/support/faultd.py ARGS``
runs ``phantomd ARGS``; SIGUSR2 breaks its fast-path workers (those whose
epoll watches a TUN/TAP descriptor) with :func:`faults.break_workers`.

The hook lives here, in tests/support/, which is never installed: no phantomd that
is not started through this file has it.
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import faults  # noqa: E402


def _break(signum, frame) -> None:
    n = 0
    for fd in faults.tun_fds():
        n += faults.break_workers([fd])
    print("faultd: broke %d fast-path worker(s)" % n, file=sys.stderr, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR2, _break)
    from phantom.node.main import main
    sys.exit(main(sys.argv[1:]))
