"""The architecture rules, checked: the data plane never imports the control
plane (or the module that wires them), and phantomd never loads the lab."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import REPO

ROOT = REPO / "phantom"
FORBIDDEN = ("phantom.control", "phantom.daemon")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    pkg = "phantom." + ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = base + ("." + node.module if node.module else "")
                out.append(mod)
                out += [mod + "." + a.name for a in node.names]
            else:
                out.append(node.module or "")
    return out


def test_dataplane_never_imports_the_control_plane():
    files = sorted((ROOT / "dataplane").rglob("*.py"))
    assert len(files) >= 8
    bad = {str(f.relative_to(ROOT)): m for f in files for m in _imports(f) if m.startswith(FORBIDDEN)}
    assert bad == {}


def test_fast_path_never_imports_the_control_plane():
    files = sorted(p for p in (ROOT / "fastpath").rglob("*") if p.suffix in (".pyx", ".pxd", ".pxi"))
    assert len(files) >= 3, files
    for f in files:
        text = f.read_text()
        assert not re.search(r"^\s*(from|import|cimport)\s+(phantom\.control|phantom\.daemon|\.\.?control)",
                             text, re.M), f


def test_shared_modules_import_neither_plane():
    # phantom/wire/ is a package: Phantom's format, WireGuard's, the demultiplexer
    wire = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "wire").glob("*.py"))
    assert {"wire/__init__.py", "wire/phantom.py", "wire/wireguard.py", "wire/demux.py"} <= set(wire)
    for name in (*wire, "crypto.py", "constants.py"):
        mods = _imports(ROOT / name)
        assert not [m for m in mods if m.startswith(FORBIDDEN + ("phantom.dataplane",))], name


def test_phantomd_never_loads_the_lab():
    """The lab (phantomlab/: namespaces, iperf3, wireguard-go, demo, verify)
    ships beside phantom, never inside phantomd: importing phantom.daemon, and
    then every module of the phantom package (what phantomd may load lazily:
    the fast path, the stores, the WireGuard protocol, the API...), loads no
    phantomlab module.  ``phantom demo``/``verify`` reach it only by name
    (phantom/cli.py's DELEGATED), so no source file under phantom/ imports it."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import phantom, phantom.daemon
        assert not [m for m in sys.modules if m.split(".")[0] == "phantomlab"], "phantom.daemon"
        for info in pkgutil.walk_packages(phantom.__path__, "phantom."):
            if info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
            lab = sorted(m for m in sys.modules if m.split(".")[0] == "phantomlab")
            assert not lab, "importing %s loaded %s" % (info.name, lab)
        print("ok", len([m for m in sys.modules if m.startswith("phantom.")]))
    """)
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        cwd=str(REPO))
    assert cp.returncode == 0 and cp.stdout.startswith("ok"), cp.stdout + cp.stderr
    assert int(cp.stdout.split()[1]) >= 40, cp.stdout          # it really walked the package
    for path in sorted(ROOT.rglob("*.py")):
        mods = _imports(path)
        assert not [m for m in mods if m.split(".")[0] == "phantomlab"], path
