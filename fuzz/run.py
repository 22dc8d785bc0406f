"""Run the atheris harnesses: ``fuzz/run.py --target X --seconds N``.

Each target runs as its own process (libFuzzer exits the process on a crash),
over a scratch corpus directory (new inputs land there) plus the committed
seed corpus fuzz/corpus/<target>/ (read only).  Prints, per target, the
executions, libFuzzer's coverage ("cov:" edges, "ft:" features), the corpus
size and the crashes; crash inputs are written to fuzz/artifacts/<target>/.
Exit status 1 if any target crashed.

    PYTHONPATH=. python fuzz/run.py --target all --seconds 60
    PYTHONPATH=. python fuzz/run.py --target wire --runs 100000 --keep /tmp/wire-new
    PYTHONPATH=. python fuzz/run.py --target handshake -- -max_len=300   # extra libFuzzer flags
    PYTHONPATH=. python fuzz/run.py --target wire --merge /tmp/wire-new  # keep what is new
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGETS = ("wire", "handshake", "firewall", "directory", "dns", "network")
STAT = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/)?")
MAX_LEN = {"wire": 2048, "handshake": 512, "firewall": 4096, "directory": 8192, "dns": 600, "network": 4096}


def _env() -> dict:
    """The child's environment: this interpreter first on PATH, because
    libFuzzer's -merge and -fork re-run the harness script by name (shebang)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def merge(target: str, new_dir: str) -> list[str]:
    """Add to fuzz/corpus/<target>/ the inputs of ``new_dir`` that bring new
    coverage (libFuzzer -merge=1: a minimal set), as ``found-<sha1>``."""
    import hashlib
    import shutil
    seeds = os.path.join(HERE, "corpus", target)
    env = _env()
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    added = []
    with tempfile.TemporaryDirectory() as out:
        for name in os.listdir(seeds):              # the committed corpus counts as covered
            shutil.copy(os.path.join(seeds, name), out)
        before = set(os.listdir(out))
        subprocess.run([os.path.join(HERE, "fuzz_%s.py" % target), "-merge=1", out, new_dir,
                        "-max_len=%d" % MAX_LEN[target]], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in sorted(set(os.listdir(out)) - before):
            data = open(os.path.join(out, name), "rb").read()
            dest = os.path.join(seeds, "found-" + hashlib.sha1(data).hexdigest()[:16])
            with open(dest, "wb") as f:
                f.write(data)
            added.append(dest)
    return added


RSS_BUDGET_MB = 2048     # what one fuzzing process may use on top of where it starts


def rss_limit_mb() -> int:
    """libFuzzer's -rss_limit_mb for a child of this process.

    libFuzzer measures the peak RSS with getrusage(), and Linux carries a
    process's peak RSS across fork and exec: a child of a test runner that
    once held 2.4 GB starts "at" 2.4 GB.  So the budget is counted from this
    process's own peak, not from zero."""
    import resource
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return RSS_BUDGET_MB + peak_kb // 1024


def run_target(target: str, seconds: float | None, runs: int | None, keep: str | None,
               extra: list[str], quiet: bool = False, artifacts: str | None = None) -> dict:
    script = os.path.join(HERE, "fuzz_%s.py" % target)
    seeds = os.path.join(HERE, "corpus", target)
    artifacts = os.path.join(artifacts or os.path.join(HERE, "artifacts"), target) + os.sep
    os.makedirs(artifacts, exist_ok=True)
    tmp = None
    if keep:
        scratch = keep
        os.makedirs(scratch, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="phantom-fuzz-%s-" % target)
        scratch = tmp.name
    argv = [sys.executable, script, scratch, seeds, "-artifact_prefix=" + artifacts,
            "-max_len=%d" % MAX_LEN[target], "-print_final_stats=1", "-timeout=10",
            "-rss_limit_mb=%d" % rss_limit_mb()]
    words = os.path.join(HERE, "%s.dict" % target)
    if os.path.exists(words):
        argv.append("-dict=" + words)
    if seconds is not None:
        argv.append("-max_total_time=%d" % max(1, int(seconds)))
    if runs is not None:
        argv.append("-runs=%d" % runs)
    argv += extra
    env = _env()
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace",
                          timeout=(seconds or 3600) + 120)
    elapsed = time.monotonic() - t0
    if tmp is not None:
        tmp.cleanup()
    execs = cov = ft = corp = 0
    for line in proc.stdout.splitlines():
        m = STAT.match(line)
        if m:
            execs, cov, ft = int(m.group(1)), int(m.group(3)), int(m.group(4))
            corp = int(m.group(5) or corp)
        m = re.match(r"stat::number_of_executed_units: (\d+)", line)
        if m:
            execs = int(m.group(1))
    crashed = proc.returncode != 0
    crash_files = re.findall(r"Test unit written to (\S+)", proc.stdout)
    result = {"target": target, "execs": execs, "cov": cov, "ft": ft, "corpus": corp,
              "seconds": round(elapsed, 1), "crashes": len(crash_files) or int(crashed),
              "crash_files": crash_files, "returncode": proc.returncode, "output": proc.stdout}
    if not quiet:
        print("%-10s execs %-9d cov %-6d ft %-6d corpus %-5d %6.1fs  %5.0f exec/s  crashes %d%s"
              % (target, execs, cov, ft, corp, elapsed, execs / max(elapsed, 1e-9), result["crashes"],
                 ("  " + " ".join(crash_files)) if crash_files else ""))
        if crashed:
            tail = proc.stdout.splitlines()[-40:]
            print("\n".join("    " + t for t in tail))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="all", choices=TARGETS + ("all",))
    ap.add_argument("--seconds", type=float, default=None, help="run time per target")
    ap.add_argument("--runs", type=int, default=None, help="executions per target")
    ap.add_argument("--keep", default=None, help="directory for new corpus inputs (one target)")
    ap.add_argument("--merge", default=None, metavar="DIR",
                    help="add DIR's inputs that bring new coverage to the committed corpus, then stop")
    ap.add_argument("extra", nargs="*", help="more libFuzzer flags, after --")
    args = ap.parse_args(argv)
    if args.seconds is None and args.runs is None:
        args.seconds = 30
    targets = TARGETS if args.target == "all" else (args.target,)
    if args.merge:
        for t in targets:
            added = merge(t, args.merge)
            print("%-10s %d inputs added to fuzz/corpus/%s" % (t, len(added), t))
        return 0
    results = [run_target(t, args.seconds, args.runs, args.keep, args.extra) for t in targets]
    return 1 if any(r["returncode"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
