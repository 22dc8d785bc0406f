"""The atheris harnesses (fuzz_*.py, run as scripts) and their runner,
fuzz/run.py, importable as ``fuzz.run`` from the repository's root
(tests/fuzz/test_fuzz.py runs every target for a few seconds)."""
