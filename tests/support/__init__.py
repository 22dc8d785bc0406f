"""Helpers the tests share that are not fixtures (the fixtures are in
tests/conftest.py) and not lab equipment (that is phantomlab/)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]      # the repository's root
