"""The DataPath contract is complete and both data paths implement all of it.

phantom/dataplane/contract.py declares everything the control plane may ask
of a data path.  Checked here: both paths (reference and fast) have every
member with the Protocol's parameters, and nothing outside the data plane
uses (calls, reads, or probes with hasattr/getattr) a data path member the
Protocol does not declare.  The behaviour of each member is the rest of
tests/contract/, run on both paths."""

from __future__ import annotations

import ast
import inspect

import pytest

from phantom.dataplane.contract import DataPath, DataPathEvents
from tests.support import REPO
from tests.support.datapath import Node

IMPLS = ["reference", "fast"]
ROOT = REPO / "phantom"
DATA_PLANE = (ROOT / "dataplane", ROOT / "fastpath")


def _members(proto) -> dict:
    out = {name: None for name in getattr(proto, "__annotations__", {})}
    for name, value in vars(proto).items():
        if name.startswith("_"):
            continue
        if inspect.isfunction(value) or isinstance(value, property):
            out[name] = value
    return out


MEMBERS = _members(DataPath)


def _params(fn) -> list:
    return [(p.name, p.kind, p.default) for p in list(inspect.signature(fn).parameters.values())[1:]]


def test_the_contract_names_what_the_daemon_probed_for():
    for name in ("set_relay", "set_relay_route", "set_relay_pair", "relayed", "worker_stats",
                 "update_routes", "lookup", "failure", "mode", "set_firewall"):
        assert name in MEMBERS, name


@pytest.mark.parametrize("impl", IMPLS)
def test_both_paths_implement_every_member(impl):
    if impl == "fast":
        pytest.importorskip("phantom.fastpath._engine", reason="phantom.fastpath._engine is not built")
    node = Node(impl)
    try:
        cls = type(node.dp)
        for name, decl in MEMBERS.items():
            assert hasattr(node.dp, name), "%s has no %s" % (cls.__name__, name)
            mine = inspect.getattr_static(cls, name, None)
            if isinstance(decl, property):
                # read-only in the contract: a property or a plain attribute
                assert isinstance(mine, property) or name in vars(node.dp), "%s.%s" % (cls.__name__, name)
            elif decl is not None:
                assert callable(mine), "%s.%s" % (cls.__name__, name)
                assert _params(mine) == _params(decl), "%s.%s%s, the contract says %s" % (
                    cls.__name__, name, inspect.signature(mine), inspect.signature(decl))
        assert node.dp.worker_stats is None or isinstance(node.dp.worker_stats, dict)
        assert isinstance(node.dp.relayed, dict)
        assert node.dp.failure() is None
    finally:
        node.close()


def _is_data_path(node: ast.AST) -> bool:
    """``dp``, ``self.dp``, ``d.dp``, ...: how the control plane names its data path."""
    return (isinstance(node, ast.Name) and node.id == "dp") or \
        (isinstance(node, ast.Attribute) and node.attr == "dp")


def _uses(path) -> set:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_data_path(node.value):
            out.add((node.attr, node.lineno))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2 \
                and _is_data_path(node.args[0]) and isinstance(node.args[1], ast.Constant):
            out.add((node.args[1].value, node.lineno))
    return out


def test_nothing_outside_the_data_plane_uses_a_member_the_contract_lacks():
    seen, missing = set(), []
    for path in sorted(ROOT.rglob("*.py")):
        if any(path.is_relative_to(d) for d in DATA_PLANE):
            continue
        for name, line in _uses(path):
            seen.add(name)
            if name not in MEMBERS:
                missing.append("%s:%d dp.%s" % (path.relative_to(REPO), line, name))
    assert not missing, "not in phantom/dataplane/contract.py's DataPath: %s" % missing
    assert {"add_peer", "install_keypair", "set_endpoint"} <= seen      # the scan finds the daemon's calls


def test_the_events_protocol_is_what_the_paths_call():
    assert set(_members(DataPathEvents)) == {"control_packet", "control_packets", "handshake_needed",
                                            "keypair_confirmed", "data_path_failed"}
