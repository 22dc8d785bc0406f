"""A rig shared by several tests of one module (docs/testing.md, "What else
keeps the suite's time down"): topologies, phantomd and wireguard-go made
once, on first use, and torn down when the module ends (or at interpreter
exit, through the rig's registry, if the run is killed).

Only for tests that need *a* working setup and change nothing in it: a test
that restarts, kills, reloads, roams, opens, closes or reconfigures keeps its
own.  Tests that share must not depend on their order: they check counters
as differences over their own traffic.  Mark them with one
``pytest.mark.xdist_group`` per shared setup, so that under
``--dist loadgroup`` one worker makes it once.

    _rig = rig_fixture("tunnel")

    @pytest.fixture
    def shared(request, _rig):
        return _rig.for_test(request)
"""

from __future__ import annotations

import contextlib

import pytest

from phantomlab import netns


def rig_fixture(name: str):
    """A module-scoped fixture holding the module's :class:`SharedRig`."""
    @pytest.fixture(scope="module")
    def _rig(tmp_path_factory):
        with SharedRig(tmp_path_factory, name) as rig:
            yield rig
    return _rig


class SharedRig:
    """Module-scoped setups, each made once by ``get(key, make)``."""

    def __init__(self, tmp_path_factory, name: str):
        self.tmp_path_factory = tmp_path_factory
        self.name = name
        self.stack = contextlib.ExitStack()
        self.daemons: list = []
        self.made: dict = {}
        self.daemons_of: dict = {}          # key -> the daemons its make() started
        self.stack.callback(lambda: netns.stop_all(list(reversed(self.daemons))))

    def __enter__(self) -> "SharedRig":
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def get(self, key, make):
        """The setup ``key``, made by ``make(rig, tmp_path)`` the first time."""
        if key not in self.made:
            tmp = self.tmp_path_factory.mktemp("%s-%s" % (self.name, key))
            before = len(self.daemons)
            self.made[key] = make(self, tmp)
            self.daemons_of[key] = self.daemons[before:]
        return self.made[key]

    def topology(self, builder):
        """Enter a topology context manager (``netns.two_hosts()``, ...) until the module ends."""
        return self.stack.enter_context(builder)

    def daemon_factory(self, tmp):
        """A callable with the ``daemon_factory`` fixture's signature (what
        phantomlab.nodes.start and mesh pass), whose daemons live until the
        module ends."""
        def start(where, args, *, http_port=4567, http_host="127.0.0.1", name=None, executable=None,
                  wait=True, timeout=10.0, env=None, token=None, token_file=None, cwd=None):
            name = name or "d%d" % len(self.daemons)
            d = netns.DaemonProcess(where, args, http_port=http_port, http_host=http_host, name=name,
                                    log_path=tmp / ("%s.log" % name), executable=executable,
                                    env=env, token=token, token_file=token_file, cwd=cwd)
            self.daemons.append(d)
            d.start()
            if wait:
                d.wait_ready(timeout)
            return d
        return start

    def wg_factory(self, tmp):
        """A callable with the ``wg_factory`` fixture's signature."""
        from phantomlab import wggo

        def make(host, **kw):
            d = wggo.WgDevice(host, tmp, **kw)
            self.stack.callback(d.stop)
            return d
        return make

    def for_test(self, request):
        """``get(key, make)`` for one test: the shared daemons' logs are
        attached to its report when it fails, with those of its own
        ``daemon_factory`` (which still stops only its own)."""
        from tests.conftest import DAEMONS

        def get(key, make):
            setup = self.get(key, make)
            own = request.node.stash.get(DAEMONS, [])
            if not isinstance(own, _Joined):
                request.node.stash[DAEMONS] = _Joined(own, self.daemons_of[key])
            return setup
        return get


class _Joined:
    """Two daemon lists seen as one (both may still grow)."""

    def __init__(self, *lists):
        self.lists = lists

    def __iter__(self):
        for lst in self.lists:
            yield from lst
