"""phantom/lazy.py: a package face that loads its parts when first named."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "lazypkg"
    root.mkdir()
    (root / "__init__.py").write_text(textwrap.dedent("""
        from phantom.lazy import lazy_face
        EAGER = 1
        _LAZY = {"heavy": ("Heavy", "LIMIT")}
        __getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY, submodules=("extra",))
    """))
    (root / "heavy.py").write_text("LIMIT = 7\nclass Heavy:\n    pass\n")
    (root / "extra.py").write_text("X = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("lazypkg")
    for name in [m for m in sys.modules if m == "lazypkg" or m.startswith("lazypkg.")]:
        del sys.modules[name]


def test_a_part_is_imported_when_one_of_its_names_is_first_used(package):
    assert "lazypkg.heavy" not in sys.modules
    assert package.LIMIT == 7
    assert "lazypkg.heavy" in sys.modules
    assert package.__dict__["LIMIT"] == 7            # kept: the next lookup is an ordinary one
    assert package.Heavy is sys.modules["lazypkg.heavy"].Heavy
    from lazypkg import Heavy                          # from-imports go through the same door
    assert Heavy is package.Heavy


def test_parts_and_named_submodules_are_modules_and_unknown_names_fail(package):
    assert package.extra.X == 3 and package.heavy.LIMIT == 7
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        package.nope
    assert {"EAGER", "Heavy", "LIMIT", "heavy", "extra"} <= set(dir(package))
