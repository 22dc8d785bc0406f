"""The entry point's old name: console scripts installed before issue 19
(``phantomd = phantom.daemon:main``) still start phantomd.  It is
:func:`phantom.node.main.main` now; re-running ``setup.sh`` (``pip install -e .``)
makes scripts that name it directly."""

import sys

from .node.main import main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
