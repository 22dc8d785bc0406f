"""The protocols' layout rules (issue 19, item 3), checked on the imports:

* neither protocol package imports the other: what they share is in
  phantom/protocols/ (the HKDF, the cookie mechanism, the limits, the
  handshake error and session keys) and phantom/wire/ (the framing);
* nothing under phantom/protocols/ imports the data plane (the cipher kind
  a keypair carries is declared in phantom/wire/ciphers.py, below both);
* the roles (nat/, rendezvous/, relay/, directory/) and the protocols never
  import the daemon, and the wire formats import neither the roles nor the
  protocols.
"""

from __future__ import annotations

import ast
import re

from tests.unit.test_layout import ROOT, _imports


def _modules(folder: str) -> dict:
    return {str(f.relative_to(ROOT)): _imports(f) for f in sorted((ROOT / folder).rglob("*.py"))}


def _offending(folder: str, forbidden: tuple) -> dict:
    return {name: sorted(m for m in mods if m.startswith(forbidden))
            for name, mods in _modules(folder).items() if any(m.startswith(forbidden) for m in mods)}


def test_neither_protocol_imports_the_other():
    assert len(_modules("protocols/phantom")) >= 5 and len(_modules("protocols/wireguard")) >= 6
    assert _offending("protocols/phantom", ("phantom.protocols.wireguard",)) == {}
    assert _offending("protocols/wireguard", ("phantom.protocols.phantom",)) == {}


def test_the_shared_protocol_modules_import_neither_protocol():
    shared = {n: m for n, m in _modules("protocols").items() if n.count("/") == 1 and n != "protocols/registry.py"}
    assert {"protocols/kdf.py", "protocols/cookie.py", "protocols/limits.py", "protocols/handshake.py",
            "protocols/tai64n.py"} <= set(shared)
    bad = {n: m for n, m in shared.items()
           if any(x.startswith(("phantom.protocols.phantom", "phantom.protocols.wireguard")) for x in m)}
    assert bad == {}


def test_protocols_never_import_the_data_plane():
    assert _offending("protocols", ("phantom.dataplane", "phantom._fastpath", "phantom.fastpath")) == {}


def test_roles_and_protocols_never_import_the_daemon():
    for folder in ("protocols", "nat", "rendezvous", "relay", "directory"):
        assert _offending(folder, ("phantom.daemon",)) == {}, folder


def test_wire_imports_no_protocol_and_no_role():
    assert _offending("wire", ("phantom.protocols", "phantom.nat", "phantom.rendezvous", "phantom.relay",
                               "phantom.directory")) == {}


ROLES_AND_PROTOCOLS = ("phantom.protocols", "phantom.nat", "phantom.rendezvous", "phantom.relay", "phantom.directory")


def test_the_data_plane_imports_no_protocol_and_no_role():
    """They left phantom/control/, so tests/unit/test_layout.py's "never imports
    phantom.control" no longer covers them: the data plane stays below them too."""
    assert _offending("dataplane", ROLES_AND_PROTOCOLS) == {}
    for f in [*ROOT.glob("_fastpath.p*"), *ROOT.glob("fastpath/*.p*")]:
        if f.suffix in (".pyx", ".pxd", ".pxi"):
            text = f.read_text()
            assert not re.search(r"^\s*(from|import|cimport)\s+(phantom\.|\.+)(protocols|nat|rendezvous|relay|directory)\b",
                                 text, re.M), f


# what a name with a leading underscore may be read as on another object than self/cls
_PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make"}     # namedtuple's API


def _private_reads(path) -> list:
    """``x._name`` where x is not self/cls and ``_name`` is not defined in the same
    module (a private attribute of another module's object)."""
    tree = ast.parse(path.read_text(), str(path))
    own = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(n.name)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            own.add(n.attr)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            own.add(n.id)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            own.add(n.target.id)
    slots = {e.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
             and any(getattr(t, "id", None) == "__slots__" for t in n.targets)
             for e in getattr(n.value, "elts", ()) if isinstance(e, ast.Constant)}
    own |= slots
    return ["%s:%d %s" % (path.relative_to(ROOT), n.lineno, ast.unparse(n)) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
            and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
            and n.attr not in own and n.attr not in _PUBLIC_UNDERSCORE]


def test_protocols_roles_and_wire_read_no_other_modules_private_attributes():
    """demux.py read the wire modules' ``_EXPECTED_SIZE(S)``, the DHT store a
    signer's ``_scalar`` and ``_nonce_key``, the directory client the DHT node's
    ``_ses``: each now goes through a public name (EXPECTED_SIZES,
    NodeSigner.expanded_secret, DhtNode.running)."""
    bad = []
    for folder in ("wire", "protocols", "nat", "rendezvous", "relay", "directory"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            bad += _private_reads(f)
    assert bad == []
