"""The architecture rule, checked: the data plane never imports the control
plane (or the module that wires them)."""

from __future__ import annotations

import ast
import re
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
    files = sorted((ROOT / "dataplane").glob("*.py"))
    assert len(files) >= 8
    bad = {str(f.name): m for f in files for m in _imports(f) if m.startswith(FORBIDDEN)}
    assert bad == {}


def test_fast_path_never_imports_the_control_plane():
    for f in [ROOT / "_fastpath.pyx", ROOT / "_fastpath.pxd"]:
        if f.exists():
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
