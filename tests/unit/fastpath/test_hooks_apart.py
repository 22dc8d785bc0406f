"""The fast path's test and benchmark hooks live in phantom.fastpath._testing,
a separate extension module that phantomd never loads (issue 19 item 4)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from tests.support import REPO

ROOT = REPO / "phantom"


# The fast path's test and benchmark hooks: not in phantomd.
FAST_PATH_HOOKS = ("chacha_seal_packet", "chacha_open_packet", "aegis_seal_packet", "aegis_open_packet",
                   "bench_cipher", "chacha_crosscheck", "seal_into", "open_into", "seal_open_inplace",
                   "bench_seal_open", "inet_sum", "bench_sum16", "fw_decide", "fw_bench",
                   "set_fault_seal", "ReplayWindow")


def test_phantomd_never_loads_the_fast_path_test_hooks():
    """The hooks that tests and benchmarks call into the fast path's C code
    (chacha_seal_packet, inet_sum, fw_decide, set_fault_seal, ...) live in
    phantom.fastpath._testing, a separate extension: phantomd building and
    starting a --fast data path, then importing every other module of the
    package, never loads it, and no extension module it loads (nor the
    Forwarder) carries a hook.  No source file under phantom/ names it."""
    pytest.importorskip("phantom.fastpath._engine", reason="phantom.fastpath._engine is not built")
    code = textwrap.dedent("""
        import asyncio, importlib, pkgutil, socket, sys
        import phantom
        from phantom import crypto
        from phantom.control.config import Settings
        from phantom.daemon import Daemon
        from phantom.dataplane.types import Mode
        HOOKS, NAMES = "phantom.fastpath._testing", %r

        def loaded_hooks():
            out = [m for m in sys.modules if m == HOOKS]
            for name, m in list(sys.modules.items()):
                if name.startswith("phantom") and str(getattr(m, "__file__", "")).endswith(".so"):
                    out += ["%%s.%%s" %% (name, h) for h in NAMES if hasattr(m, h)]
                    fwd = getattr(m, "Forwarder", None)
                    out += ["%%s.Forwarder.%%s" %% (name, h) for h in NAMES if hasattr(fwd, h)]
            return out

        d = Daemon(Settings(mode=Mode.TEST, fast=True), bytearray(crypto.x25519_private()))
        d.udp, d.test_sock = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for s in (d.udp, d.test_sock):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)

        async def run():
            d.build()
            d.dp.start()
            await asyncio.sleep(0.05)
            d.dp.close()
        asyncio.run(run())
        assert type(d.dp).__name__ == "FastDataPath", d.dp
        assert not loaded_hooks(), "phantomd --fast loaded %%s" %% loaded_hooks()
        for info in pkgutil.walk_packages(phantom.__path__, "phantom."):
            if info.name == HOOKS or info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
            assert not loaded_hooks(), "importing %%s loaded %%s" %% (info.name, loaded_hooks())
        print("ok")
    """ % (FAST_PATH_HOOKS,))
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        cwd=str(REPO))
    assert cp.returncode == 0 and cp.stdout.startswith("ok"), cp.stdout + cp.stderr
    for path in sorted(ROOT.rglob("*")):
        if path.suffix not in (".py", ".pyx", ".pxd", ".pxi") or path.name == "_testing.pyx":
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(from|import|cimport)\b[^\n]*\b_testing\b", text, re.M), path
