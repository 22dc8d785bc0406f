#!/usr/bin/env python3
"""Soak: a tunnel under churn for --minutes, watched for leaks and stalls (issue #15).

    .venv/bin/python bench/soak.py --minutes M [--path fast|reference] [--json out.json]

The run itself lives in phantomlab/soak.py (read its docstring for what is
measured and what fails), shared with the soak tier of the tests
(tests/soak/test_soak.py, 2 minutes in CI).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phantomlab.soak import main  # noqa: E402

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench/soak.py: interrupted, everything cleaned up", file=sys.stderr)
        sys.exit(130)
