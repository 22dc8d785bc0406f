"""The ``phantom directory`` command (``python -m phantom.control.directory``).

The directory role itself is :mod:`phantom.directory`."""

from .cli import build_parser, main  # noqa: F401
