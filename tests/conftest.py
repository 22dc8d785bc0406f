"""Shared pytest wiring: the netns gate, topology/daemon/sniffer fixtures,
daemon logs on failure, and the end-of-session leak check.

The rig itself lives in phantom/netns.py; see docs/testing.md.
"""

from __future__ import annotations

import os
import shutil

import pytest

from phantom import netns

DAEMONS = pytest.StashKey[list]()
_restore_signals = None
_missing_cache: list = []       # [reason-or-None] once computed


def _netns_missing() -> str | None:
    """Why netns tests cannot run (computed once, on the first netns test)."""
    if not _missing_cache:
        _missing_cache.append(netns.requirements_missing())
    return _missing_cache[0]


def _rig_usable() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


# ---------------------------------------------------------------------------
# Session hooks
# ---------------------------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    # The markers are declared in pyproject.toml; declare them here as well
    # when they are missing, so --strict-markers works from any rootdir.
    declared = {line.split(":")[0].strip() for line in config.getini("markers")}
    if "netns" not in declared:
        config.addinivalue_line("markers", "netns: needs root, /dev/net/tun and ip netns")
    if "slow" not in declared:
        config.addinivalue_line("markers", "slow: takes more than a few seconds")


_runtime_dir = None             # the session's PHANTOM_RUNTIME_DIR, when this session made it


def pytest_sessionstart(session: pytest.Session) -> None:
    global _restore_signals, _runtime_dir
    _restore_signals = netns.install_signal_handlers()
    if "PHANTOM_RUNTIME_DIR" not in os.environ:
        # phantomd started as root writes a runtime record (phantom/runtime.py):
        # the session's daemons write theirs here, not in /run/phantom, and
        # the `phantom` clients the tests run look here (both inherit it)
        import tempfile
        _runtime_dir = tempfile.mkdtemp(prefix="phantom-run-")
        os.environ["PHANTOM_RUNTIME_DIR"] = _runtime_dir
    if _rig_usable():
        removed = netns.sweep_stale()
        if removed:
            tr = session.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                tr.write_line(f"netns rig: removed leftovers of dead runs: {', '.join(removed)}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _restore_signals
    try:
        if not _rig_usable():
            return
        left = netns.leftovers()        # before forced cleanup: a leak is a failure
        errors = netns.cleanup_all()
        left_after = netns.leftovers()
        if left or errors or left_after:
            tr = session.config.pluginmanager.get_plugin("terminalreporter")
            msg = (f"netns rig: left behind after the session: {left}; cleanup errors: {errors}; "
                   f"still present after forced cleanup: {left_after}")
            if tr is not None:
                tr.write_line(msg, red=True, bold=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        if _restore_signals is not None:
            _restore_signals()
            _restore_signals = None
        if _runtime_dir is not None:
            shutil.rmtree(_runtime_dir, ignore_errors=True)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is None:
        return
    missing = _netns_missing()
    decision = netns.gate_decision(missing)
    if decision == "fail":
        pytest.fail(f"netns test cannot run, and CI is set so it may not be skipped: {missing}",
                    pytrace=False)
    elif decision == "skip":
        pytest.skip(f"netns: {missing}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if report.failed:
        for d in item.stash.get(DAEMONS, []):
            report.sections.append(
                (f"daemon log {d.name} (netns {d.ns.name}, {d.log_path})", d.log_tail(200)))
    return report


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

@pytest.fixture
def two_hosts():
    """Namespaces a, b on one veth: 10.201.0.1/.2, fd01:201::1/::2 (eth0)."""
    with netns.two_hosts() as topo:
        yield topo


@pytest.fixture
def lan3():
    """Hosts a, b, c on one bridge: 10.204.0.1-3, fd01:204::1-3 (eth0)."""
    with netns.lan(3) as topo:
        yield topo


@pytest.fixture
def nat_topo():
    """a (10.202.0.2) behind NAT router r (10.202.0.1 | 10.203.0.1) to b (10.203.0.2)."""
    with netns.nat() as topo:
        yield topo


@pytest.fixture
def daemon_factory(request, tmp_path):
    """``start(where, args, *, http_port=4567, http_host="127.0.0.1", name=None,
    executable=None, wait=True, timeout=10.0, env=None, token=None,
    token_file=None, cwd=None)``
    -> a started (and by default ready) DaemonProcess; logs in tmp_path;
    every daemon is stopped at teardown and its log is attached on failure."""
    daemons: list[netns.DaemonProcess] = []
    request.node.stash[DAEMONS] = daemons

    def start(where, args, *, http_port=4567, http_host="127.0.0.1", name=None, executable=None,
              wait=True, timeout=10.0, env=None, token=None, token_file=None, cwd=None):
        name = name or f"d{len(daemons)}"
        d = netns.DaemonProcess(where, args, http_port=http_port, http_host=http_host, name=name,
                                log_path=tmp_path / f"{name}.log", executable=executable,
                                env=env, token=token, token_file=token_file, cwd=cwd)
        daemons.append(d)
        d.start()
        if wait:
            d.wait_ready(timeout)
        return d

    yield start
    for d in reversed(daemons):
        d.stop()


@pytest.fixture
def sniffer(tmp_path):
    """``capture(where, iface, bpf_filter="")`` -> a started Sniffer writing
    into tmp_path; call ``.stop()`` for the packets; stopped at teardown."""
    made: list[netns.Sniffer] = []

    def capture(where, iface, bpf_filter="", name=None):
        s = netns.Sniffer(where, iface, bpf_filter,
                          path=tmp_path / f"{name or 'capture'}-{len(made)}.pcap")
        made.append(s)
        return s.start()

    yield capture
    for s in made:
        s.stop()
