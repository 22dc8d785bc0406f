"""Shared pytest wiring for every tier (docs/testing.md):

* markers: the tier markers (soak, fuzz) follow the folder, ``wireguard_go``
  follows the ``wg_factory`` fixture; the others are written on the tests;
* the netns gate, topology/daemon/sniffer fixtures, daemon logs on failure;
* the end-of-session leak check, per pytest-xdist worker: each worker owns
  the namespaces named with its own pid, checks and cleans only those, and
  reports a leak to the controller, which fails the run;
* fixtures of the sans-IO tiers: ``clock``, ``wall_clock``, ``recorder``,
  ``keypair``, ``engine_pair``, ``dp_pair`` (the data-path harness,
  tests/support/datapath.py), and ``wg_factory`` for wireguard-go.

The rig itself lives in phantomlab/ (phantomlab/netns.py names its parts).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

from phantomlab import netns

# pytest keeps each test module's assertion-rewritten code in __pycache__, but
# not when PYTHONDONTWRITEBYTECODE is set (some shells set it): then every run,
# and every xdist worker, rewrites every test module again (about 5 s of CPU
# per process for the unit tier alone).  This process (not the daemons it
# starts) writes the cache again; it is read whatever the variable says.
sys.dont_write_bytecode = False

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

MARKERS = {
    "netns": "needs root, /dev/net/tun and ip netns",
    "postgres": "starts a PostgreSQL cluster",
    "dht": "starts a private libtorrent DHT swarm",
    "browser": "drives headless Chromium",
    "wireguard_go": "runs Debian's wireguard-go",
    "fuzz": "runs the atheris harnesses",
    "soak": "the soak tier: minutes of churn",
    "slow": "takes more than a few seconds",
}
TIER_OF_FOLDER = {"soak": "soak", "fuzz": "fuzz"}      # tests/<folder>/ -> marker
TESTS = Path(__file__).resolve().parent
_leaks: list[str] = []          # on the xdist controller: what workers reported


def pytest_configure(config: pytest.Config) -> None:
    # The markers are declared in pyproject.toml; declare them here as well
    # when they are missing, so --strict-markers works from any rootdir.
    declared = {line.split(":")[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", "%s: %s" % (name, text))


# Longest first: pytest-xdist hands tests out in collection order, so the
# soak tier (minutes each) starts at once instead of ending the run late.
TIER_ORDER = {"soak": 0, "e2e": 1, "fuzz": 2, "contract": 3, "unit": 4}


def _tier(item) -> int:
    try:
        rel = Path(str(item.path)).resolve().relative_to(TESTS)
    except ValueError:
        return len(TIER_ORDER)
    return TIER_ORDER.get(rel.parts[0], len(TIER_ORDER)) if len(rel.parts) > 1 else len(TIER_ORDER)


@pytest.hookimpl(trylast=True)             # after pytest-xdist's own (it names the groups)
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if getattr(config.option, "loadgroup", False):     # an xdist worker under --dist loadgroup
        lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(
                "pytest-xdist did not apply xdist_group to %s (pytest %s with this pytest-xdist: "
                "see the pin in pyproject.toml)" % (lost[0], pytest.__version__))
    items.sort(key=_tier)                  # stable: file order within a tier


def pytest_itemcollected(item) -> None:
    """The markers that follow from where a test is and what it uses, set as
    it is collected (before ``-m`` selects)."""
    try:
        rel = Path(str(item.path)).resolve().relative_to(TESTS)
    except ValueError:
        rel = None
    if rel is not None and len(rel.parts) > 1 and rel.parts[0] in TIER_OF_FOLDER:
        item.add_marker(TIER_OF_FOLDER[rel.parts[0]])
    if "wg_factory" in getattr(item, "fixturenames", ()):
        item.add_marker("wireguard_go")


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


def _report_leak(session: pytest.Session, msg: str) -> None:
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(msg, red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leak check of this process's own names (``phx<pid>x``): in a plain
    run the only process, under xdist each worker for its own namespaces (a
    worker's exit status does not reach the controller, so it hands the
    leak over in ``workeroutput``; :func:`pytest_testnodedown` collects it)."""
    global _restore_signals
    try:
        if _rig_usable():
            left = netns.leftovers()        # before forced cleanup: a leak is a failure
            errors = netns.cleanup_all()
            left_after = netns.leftovers()
            if left or errors or left_after:
                msg = (f"netns rig: left behind after the session: {left}; cleanup errors: {errors}; "
                       f"still present after forced cleanup: {left_after}")
                workeroutput = getattr(session.config, "workeroutput", None)
                if workeroutput is not None:
                    workeroutput["netns_leak"] = msg
                _report_leak(session, msg)
        for msg in _leaks:
            _report_leak(session, msg)
    finally:
        if _restore_signals is not None:
            _restore_signals()
            _restore_signals = None
        if _runtime_dir is not None:
            shutil.rmtree(_runtime_dir, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """On the xdist controller: a worker finished; keep the leak it reported."""
    msg = getattr(node, "workeroutput", {}).get("netns_leak")
    if msg:
        _leaks.append(f"[{node.gateway.id}] {msg}")


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
    netns.stop_all(list(reversed(daemons)))     # SIGTERM to all, their grace periods overlap


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


@pytest.fixture
def wg_factory(tmp_path):
    """``make(host, index=, private=, ...)`` -> a running phantomlab.wggo.WgDevice;
    all stopped at teardown.  Marks the test ``wireguard_go``."""
    from phantomlab import wggo
    why = wggo.missing()
    if why:
        pytest.skip(why)
    made: list = []

    def make(host, **kw):
        d = wggo.WgDevice(host, tmp_path, **kw)
        made.append(d)
        return d

    yield make
    for d in reversed(made):
        d.stop()


# ---------------------------------------------------------------------------
# Sans-IO fixtures (unit and contract tiers)
# ---------------------------------------------------------------------------

@pytest.fixture
def clock():
    """A settable monotonic clock at 1000.0 (tests/support/clock.py)."""
    from tests.support.clock import Clock
    return Clock()


@pytest.fixture
def wall_clock():
    """A settable wall clock at 1.7e9 (TAI64N timestamps, record expiry)."""
    from tests.support.clock import Clock
    return Clock(1.7e9)


@pytest.fixture
def recorder():
    """DataPathEvents that remembers every call."""
    from tests.support.datapath import Recorder
    return Recorder()


@pytest.fixture
def keypair():
    """A fresh X25519 key pair: (private, public), bytes."""
    from phantom import crypto
    priv = crypto.x25519_private()
    return priv, crypto.x25519_public(priv)


@pytest.fixture
def engine_pair(clock, wall_clock):
    """Two Phantom engines that know each other: (a, b, peer b at a, peer a at b).
    They share ``clock`` and ``wall_clock``; no jitter; seeded randomness."""
    from phantom.constants import Tunables
    from phantom.control.engine import Engine
    from tests.support.engines import ADDR_A, ADDR_B, private_key
    t = Tunables(handshake_jitter=0.0)
    a = Engine(private_key(), t, clock=clock, wall_clock=wall_clock, rng=random.Random(1))
    b = Engine(private_key(), t, clock=clock, wall_clock=wall_clock, rng=random.Random(2))
    pa = a.add_peer(b.public_key, "b", endpoint=ADDR_B)
    pb = b.add_peer(a.public_key, "a", endpoint=ADDR_A)
    return a, b, pa, pb


@pytest.fixture(params=["reference", "fast"])
def datapath_kind(request):
    """Each data path in turn (the contract tier runs every case on both)."""
    if request.param == "fast":
        pytest.importorskip("phantom.fastpath._engine", reason="phantom.fastpath._engine is not built")
    return request.param


@pytest.fixture
def dp_pair(datapath_kind):
    """Two started data paths of one kind on their own event loop, peered with
    each other (tests/support/datapath.py): yields (a, b, loop)."""
    from tests.support.datapath import pair
    loop = asyncio.new_event_loop()
    a = b = None
    try:
        a, b = loop.run_until_complete(pair(datapath_kind, datapath_kind))
        yield a, b, loop
    finally:
        for n in (a, b):
            if n is not None:
                n.close()
        loop.close()
