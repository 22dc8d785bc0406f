"""phantom.network loads its parts when first named (PEP 562): every name it
exports is the object its module defines, whatever was imported before."""

from __future__ import annotations

import importlib
import subprocess
import sys


def test_every_exported_name_is_its_modules_object():
    import phantom.network as N
    import phantom.network.join  # noqa: F401  (imports the module phantom.network.allocate)
    assert callable(N.allocate) and N.allocate.__module__ == "phantom.network.allocate"
    for name in N.__all__:
        value = getattr(N, name)
        module = importlib.import_module(value.__module__) if hasattr(value, "__module__") \
            else None
        assert module is None or getattr(module, name) is value, name
    star = {}
    exec("from phantom.network import *", star)
    assert set(N.__all__) <= set(star)
    for sub in ("canonical", "certificate", "definition", "errors", "invite", "keys",
                "members", "names", "removal"):
        assert getattr(N, sub).__name__ == "phantom.network." + sub


def test_the_function_allocate_in_a_fresh_process():
    """The module's import (by any part) must not turn phantom.network.allocate
    into the module."""
    code = ("import phantom.network.join, phantom.network as N; "
            "from phantom.network import allocate; "
            "assert callable(allocate) and callable(N.allocate), allocate")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
