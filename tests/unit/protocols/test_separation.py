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
