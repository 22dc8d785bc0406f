"""Drop reasons and message types are declared once, in Python (types.Drop,
wire.MessageType); the fast path's D_*/FP_N_DROPS/MSG_* come from
phantom/fastpath/_generated.pxi, which setup.py generates at build time
(phantom/fastpath/generate.py).  Issue 19 item 4."""

from __future__ import annotations

import re
import shutil

import pytest

from phantom import wire
from phantom.dataplane.types import Drop
from phantom.fastpath import generate
from tests.support import REPO

FASTPATH = REPO / "phantom" / "fastpath"


def test_generated_enums_are_the_python_enums():
    text = generate.render()
    for d in Drop:
        assert re.search(r"^    D_%s = %d$" % (d.name, d.value), text, re.M), d
    assert re.search(r"^    FP_N_DROPS = %d$" % len(Drop), text, re.M)
    for m in wire.MessageType:
        assert re.search(r"^    MSG_%s = %d$" % (m.name, m.value), text, re.M), m
    assert "FP_SIG_DROP = %d " % generate.signature(Drop.__members__.items()) in text


def test_a_new_drop_reason_is_one_line_in_python(tmp_path):
    """Adding a member to Drop is all it takes: the generated include gains
    its D_ constant and the counter arrays (FP_N_DROPS) grow with it."""
    pkg = tmp_path / "phantom"
    for rel, *_ in generate.SOURCES:
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "phantom" / rel, pkg / rel)
    types = pkg / "dataplane" / "types.py"
    src = types.read_text()
    last = max(Drop, key=int)
    anchor = "    %s = %d" % (last.name, last.value)
    assert anchor in src
    types.write_text(src.replace(anchor, anchor + "\n    SOMETHING_NEW = %d  # test" % (last.value + 1), 1))
    text = generate.render(pkg)
    assert "    D_SOMETHING_NEW = %d\n" % (last.value + 1) in text
    assert "    FP_N_DROPS = %d\n" % (len(Drop) + 1) in text
    target = tmp_path / "_generated.pxi"
    assert generate.write(target, pkg) and not generate.write(target, pkg)   # rewritten only on change


def test_generation_refuses_drop_numbers_that_cannot_index_an_array(tmp_path):
    pkg = tmp_path / "phantom"
    for rel, *_ in generate.SOURCES:
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "phantom" / rel, pkg / rel)
    types = pkg / "dataplane" / "types.py"
    types.write_text(types.read_text().replace("    MALFORMED = 0 ", "    MALFORMED = 40 ", 1))
    with pytest.raises(generate.GenerateError):
        generate.render(pkg)


def test_the_fast_path_declares_no_drop_reason_or_message_type_by_hand():
    pxd = (FASTPATH / "_engine.pxd").read_text()
    assert not re.search(r"^\s*(D_[A-Z_]+|FP_N_DROPS|MSG_[A-Z_]+)\s*=", pxd, re.M)
    assert 'include "_generated.pxi"' in pxd
    for path in sorted(FASTPATH.glob("*.p[xy][xid]")):
        text = path.read_text()
        # the message type byte is compared or written by name, never as a literal
        assert not re.search(r"\bt\s*[!=]=\s*\d", text), path
        assert not re.search(r"\bbuf\[0\]\s*=\s*\d|\bp\[0\]\s*=\s*\d", text), path


def test_the_built_extension_counts_every_drop_reason():
    _engine = pytest.importorskip("phantom.fastpath._engine", reason="phantom.fastpath._engine is not built")
    assert _engine.DROP_COUNT == len(Drop)
