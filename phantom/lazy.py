"""Package faces that load their parts when first named (PEP 562).

``phantom.directory``, ``phantom.network`` and ``phantom.dns`` export names
from parts that a given process may never need: the directory's server
(aiohttp), the network's member set (logging), the DNS responder
(dnspython).  Each package imports its cheap parts eagerly and hands the rest
to :func:`lazy_face`, so ``from phantom.dns import Zone`` still works but
reading a config's ``[dns]`` section does not load dnspython.  Each package
names the same imports under ``if TYPE_CHECKING:`` too, for type checkers and
for the layout test's import graph (tests/unit/test_layout.py).
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable


def lazy_face(package: str, namespace: dict, parts: dict,
              submodules: Iterable[str] = ()) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for the package ``package`` whose globals are
    ``namespace``.  ``parts`` maps a submodule to the names it exports: such a
    name is imported from it on first use and kept in ``namespace`` (the next
    lookup is an ordinary one).  A part's own name, or one in ``submodules``,
    gives the submodule itself."""
    owner = {name: part for part, names in parts.items() for name in names}
    modules = frozenset(parts) | frozenset(submodules)

    def __getattr__(name: str):
        if name in owner:
            value = getattr(importlib.import_module("." + owner[name], package), name)
            namespace[name] = value
            return value
        if name in modules:
            return importlib.import_module("." + name, package)
        raise AttributeError("module %r has no attribute %r" % (package, name))

    def __dir__() -> list:
        return sorted(set(namespace) | set(owner) | modules)

    return __getattr__, __dir__
