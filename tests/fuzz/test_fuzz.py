"""The bounded CI run of the atheris harnesses in fuzz/ (issue 10).

Each target runs in its own process (libFuzzer ends the process on a crash,
which must not take pytest with it): first every input of the committed
corpus fuzz/corpus/<target>/ -- the seeds and the minimised inputs that once
crashed, so a regression fails here -- then a few seconds of fuzzing from
there.  Any crash fails the test with libFuzzer's report.  New inputs go to
a scratch directory, never into the repository.
"""

from __future__ import annotations

import os

import pytest

from tests.support import REPO

pytest.importorskip("atheris")

from fuzz import run as RUN  # noqa: E402  (fuzz/ is a package: fuzz/run.py)

FUZZ = REPO / "fuzz"
SECONDS = float(os.environ.get("PHANTOM_FUZZ_SECONDS", 4))      # per target: 5 targets, ~35 s in all


@pytest.mark.slow            # about 6 s a target: in the full suite (CI), not the quick set
@pytest.mark.parametrize("target", RUN.TARGETS)
def test_fuzz_target_has_a_corpus_and_no_crash(target, tmp_path):
    corpus = FUZZ / "corpus" / target
    seeds = list(corpus.iterdir())
    assert seeds, "no committed corpus for %s" % target
    assert sum(p.stat().st_size for p in seeds) < 1 << 20, "keep the corpus small"
    r = RUN.run_target(target, SECONDS, None, str(tmp_path / "new"), [], quiet=True,
                       artifacts=str(tmp_path / "artifacts"))
    out = r["output"]
    assert r["returncode"] == 0 and not r["crash_files"], "fuzz target %s crashed:\n%s" \
        % (target, "\n".join(out.splitlines()[-60:]))
    assert "INITED" in out and r["cov"] > 0, out[-2000:]
    assert r["execs"] >= len(seeds), "the corpus was not replayed: %r" % {k: r[k] for k in r if k != "output"}
    print("%s: %d execs, cov %d, ft %d" % (target, r["execs"], r["cov"], r["ft"]))
