"""``phantom``: the command-line client (console script ``phantom.cli.main:main``;
``python -m phantom.cli``).  One module per command group; see main.py."""
