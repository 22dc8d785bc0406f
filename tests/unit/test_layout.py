"""The architecture rules (docs/architecture.md, "The rules"), checked:

1. the data plane (phantom/dataplane/, the Cython fast path) never imports the
   control plane, the node that wires the planes, the protocols, the roles,
   HTTP or the command line; the shared modules (wire/, crypto, constants)
   import neither plane;
2. no import circle among phantom's modules (lazy imports inside functions
   count too: a circle is a circle whenever it is walked);
3. no module reads another object's private attribute (``x._name`` where x is
   not self/cls, and ``_name`` is not defined in that module), nor imports
   another module's private name (``from m import _name``);
4. phantomd never loads the lab (phantomlab/);
5. arrows point down: only the node (phantom/node/) and the command line
   (phantom/cli/) import the node, and only the command line imports the
   command line (a format such as protocols/wireguard/wgquick.py takes the
   node's settings as an argument; the network's command group asks a
   directory through http/client.py); the lab has no import circle either.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import REPO

ROOT = REPO / "phantom"
# What the data plane may never import: everything above it.
FORBIDDEN = tuple("phantom." + m for m in (
    "control", "node", "daemon", "protocols", "nat", "rendezvous", "relay", "directory",
    "network", "dns", "privsep", "http", "cli", "dashboard", "keys", "errors"))


def _module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    mod = _module_of(path)
    return mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]


@functools.lru_cache(maxsize=None)
def _parse(path: Path, source: str) -> ast.AST:
    """The syntax tree of a source text, parsed once per test process (the
    checks below walk the same ~250 files again and again; a tree is only
    read, never changed)."""
    return ast.parse(source, str(path))


def _tree(path: Path) -> ast.AST:
    return _parse(path, path.read_text())


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports (at module level or in a function), by
    absolute name; ``from p import n`` gives both ``p`` and ``p.n``."""
    tree = _tree(path)
    pkg = _package_of(path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = base + ("." + node.module if node.module else "")
            else:
                mod = node.module or ""
            out.append(mod)
            out += [mod + "." + a.name for a in node.names]
    return out


def _sources(root: Path = ROOT) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _cython_sources(folder: Path) -> list[Path]:
    return sorted(p for ext in ("*.pyx", "*.pxd", "*.pxi") for p in folder.rglob(ext))


def test_dataplane_never_imports_the_control_plane():
    files = sorted((ROOT / "dataplane").rglob("*.py"))
    assert len(files) >= 8
    bad = {str(f.relative_to(ROOT)): m for f in files for m in _imports(f) if m.startswith(FORBIDDEN)}
    assert bad == {}


def test_fast_path_never_imports_the_control_plane():
    # every Cython source is the data plane's except the handshake's C
    # responder (protocols/phantom/_responder.pyx), which is the protocols'
    files = [f for f in _cython_sources(ROOT) if f.relative_to(ROOT).parts[0] != "protocols"]
    assert len(files) >= 3, "the Cython sources moved: follow them"
    above = "|".join(re.escape(m.split(".", 1)[1]) for m in FORBIDDEN)
    pattern = re.compile(r"^\s*(from|import|cimport)\s+(phantom\.|\.+)(%s)\b" % above, re.M)
    bad = [str(f.relative_to(ROOT)) for f in files if pattern.search(f.read_text())]
    assert bad == []


def test_shared_modules_import_neither_plane():
    # phantom/wire/ is a package: Phantom's format, WireGuard's, the demultiplexer
    wire = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "wire").glob("*.py"))
    assert {"wire/__init__.py", "wire/phantom.py", "wire/wireguard.py", "wire/demux.py"} <= set(wire)
    for name in (*wire, "crypto.py", "constants.py"):
        mods = _imports(ROOT / name)
        assert not [m for m in mods if m.startswith(FORBIDDEN + ("phantom.dataplane",))], name


def test_phantomd_never_loads_the_lab():
    """The lab (phantomlab/: namespaces, iperf3, wireguard-go, demo, verify)
    ships beside phantom, never inside phantomd: importing phantom.node.main, and
    then every module of the phantom package (what phantomd may load lazily:
    the fast path, the stores, the WireGuard protocol, the API...), loads no
    phantomlab module.  ``phantom demo``/``verify`` reach it only by name
    (phantom/cli/main.py's DELEGATED), so no source file under phantom/ imports it."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import phantom, phantom.node.main
        assert not [m for m in sys.modules if m.split(".")[0] == "phantomlab"], "phantom.node.main"
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


def test_making_and_reading_records_loads_no_http_server_or_client():
    """``phantom join`` and the config loader read and sign directory records;
    importing what they use must not load aiohttp (the directory's server and
    client, ~0.2-0.4 s of CPU in every such process: 50 concurrent joins in
    the suite paid it 50 times).  The package's face loads those parts when
    first named."""
    code = textwrap.dedent("""
        import sys
        from phantom.directory.records import NodeSigner, parse_record
        from phantom.node.config import read_config_file, settings_from_mapping
        import phantom.cli.join
        import phantom.directory as d
        assert d.KEY_SIZE == 32 and d.MAX_BODY > 0
        print(sorted(m for m in sys.modules if m.split(".")[0] == "aiohttp"))
        d.DirectoryClient, d.create_app                   # named: loaded now
        print("aiohttp" in sys.modules)
    """)
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                        cwd=str(REPO))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split("\n")[:2] == ["[]", "True"], cp.stdout


# ------------------------------------------------------------------ no import circle
def _graph(root: Path = ROOT) -> dict:
    """phantom's (or ``root``'s) modules -> the modules of it each imports (a
    ``from p import n`` counts as importing the module p.n when there is one,
    else p)."""
    files = {_module_of(f): f for f in _sources(root)}
    graph = {}
    for mod, path in files.items():
        deps = set()
        for m in _imports(path):
            if m in files and m != mod:
                deps.add(m)
        # ``from p import n`` lists both p and p.n: keep p only when nothing
        # else was taken from it (p.n is a module of its own, not a name in p)
        for m in list(deps):
            if any(d.startswith(m + ".") for d in deps) and not _names_from(path, m):
                deps.discard(m)
        graph[mod] = deps
    return graph


def _names_from(path: Path, package: str) -> bool:
    """Whether ``path`` takes a name that is not a submodule from ``package``."""
    tree = _tree(path)
    pkg = _package_of(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = base + ("." + node.module if node.module else "")
            else:
                mod = node.module or ""
            if mod != package:
                continue
            for a in node.names:
                sub = REPO.joinpath(*(package + "." + a.name).split("."))
                if not (sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                        or list(sub.parent.glob(a.name + ".*.so"))):
                    return True
        elif isinstance(node, ast.Import) and any(a.name == package for a in node.names):
            return True
    return False


def _circles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    graph = _graph()
    assert len(graph) >= 60 and "phantom.node.daemon" in graph
    assert _circles(graph) == []


def test_the_lab_has_no_import_circle():
    """phantomlab/namespaces.py and topology.py once imported each other (for
    an annotation): the namespace layer knows a host only as something with a
    namespace (namespaces.InNamespace)."""
    graph = _graph(REPO / "phantomlab")
    assert len(graph) >= 20 and "phantomlab.topology" in graph["phantomlab.netns"]
    assert _circles(graph) == []


# ------------------------------------------------------------------ arrows point down
# The one module outside node/ and cli/ that may import the node: the entry
# point's old name (``phantomd = phantom.daemon:main``), a shim over node.main.
NODE_SHIMS = {"phantom.daemon"}


def _arrows_into(package: str) -> list:
    """``module -> imported`` for every import of ``package`` (or a module in
    it) from a module of phantom outside it."""
    out = []
    for path in _sources():
        mod = _module_of(path)
        if mod == package or mod.startswith(package + "."):
            continue
        out += ["%s -> %s" % (mod, m) for m in _imports(path)
                if m == package or m.startswith(package + ".")]
    return sorted(set(out))


def test_only_the_node_and_the_command_line_import_the_node():
    bad = [a for a in _arrows_into("phantom.node")
           if not a.startswith(("phantom.cli.", "phantom.cli ")) and a.split(" ")[0] not in NODE_SHIMS]
    assert bad == []


def test_only_the_command_line_imports_the_command_line():
    assert _arrows_into("phantom.cli") == []


def test_the_circle_check_finds_a_circle():
    """The check itself works: two modules that import each other (lazily,
    as control/api.py and control/opsapi.py once did) are one circle."""
    graph = {"a.api": {"a.opsapi"}, "a.opsapi": {"a.api"}, "a.app": {"a.api", "a.opsapi"}}
    assert _circles(graph) == [["a.api", "a.opsapi"]]


# ------------------------------------------------------------------ private attributes
# Underscore names that are public API of what they belong to: namedtuple's methods.
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}

# Reads of another phantom module's private attribute that cannot be avoided,
# each with its reason: (file under phantom/, the expression as written).  None
# today.  (A module outside phantom, imported as a module -- ipaddress's
# _BaseNetwork, the stdlib's only common base of the two network classes --
# is not one of ours: the rule is about phantom's own objects.)
ALLOWED: dict = {
}


def _foreign_modules(tree: ast.AST) -> set:
    """Names a module binds to modules outside phantom (``import ipaddress``)."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] != "phantom":
                    out.add(a.asname or a.name.split(".")[0])
    return out


def _defined(tree: ast.AST) -> set:
    """Names a module defines for itself: functions, classes, attributes it
    assigns (``self._x = ...``, ``obj._x = ...``), names it binds."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.attr)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
    return out


def _private_reads(path: Path, source: str) -> list:
    """``(expression, line)`` for every read in ``source`` of a private attribute
    the module does not define, and every private name imported from another
    phantom module (a submodule named with an underscore is a module, not a name)."""
    tree = _parse(path, source)
    own = _defined(tree)
    foreign = _foreign_modules(tree)
    pkg = _package_of(path) if path.is_relative_to(REPO) else "phantom"
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
            base = n.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Name) and base.id in foreign:
                continue          # a module outside phantom (the stdlib's ipaddress._BaseNetwork)
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            if n.attr in own or n.attr in PUBLIC_UNDERSCORE:
                continue
            out.append((ast.unparse(n), n.lineno))
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.rsplit(".", n.level - 1)[0] if n.level > 1 else pkg
                mod = base + ("." + n.module if n.module else "")
            else:
                mod = n.module or ""
            if mod.split(".")[0] != "phantom":
                continue
            for a in n.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    sub = REPO.joinpath(*(mod + "." + a.name).split("."))
                    if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists() \
                            or list(sub.parent.glob(a.name + ".*.so")) or list(sub.parent.glob(a.name + ".pyx")):
                        continue          # a module: private to its package, imported by it
                    out.append(("from %s import %s" % (mod, a.name), n.lineno))
    return out


def test_no_module_reads_another_objects_private_attributes():
    bad = []
    used = set()
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        for expr, line in _private_reads(path, path.read_text()):
            used.add((rel, expr))
            if (rel, expr) not in ALLOWED:
                bad.append("%s:%d %s" % (rel, line, expr))
    assert bad == []
    # every allowance is still needed (a fixed one comes off the list)
    assert set(ALLOWED) <= used, set(ALLOWED) - used


def test_the_private_attribute_check_finds_what_it_forbids():
    """What reload.py and uapi.py once did is found; self, cls, super() and a
    module's own attributes on other objects of its class are not."""
    found = _private_reads(ROOT / "node" / "x.py", textwrap.dedent("""
        from ..node.api import _Handler
        class Daemon:
            def __init__(self):
                self._mine = 1
            def same(self, other):
                return self._mine + other._mine + super()._x()
        import ipaddress
        from ..control import engine as eng
        def reload(daemon, engine):
            daemon._do(engine.open(1))
            net: ipaddress._BaseNetwork = eng._networks([])
            return engine._next_peer_id, engine.peers._replace
    """))
    assert [e for e, _ in found] == ["from phantom.node.api import _Handler", "daemon._do",
                                     "eng._networks", "engine._next_peer_id"]
