#!/usr/bin/env bash
# Phantom's one setup command (see README): run as root on Debian 12.
#
#   bash setup.sh            install everything, then run the two-namespace demo
#   bash setup.sh --no-demo  install everything, skip the demo (CI uses this)
#
# Steps:
#   1. system packages (apt-get; skipped when all are already installed)
#   2. a virtual environment in ./.venv, made with the python3 found on PATH
#   3. Phantom itself, editable, with the test and bench extras
#   4. the Cython fast path built in place, then checked by importing it
#   5. the demo: .venv/bin/phantom demo
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)

RUN_DEMO=1
for arg in "$@"; do
    case "$arg" in
        --no-demo) RUN_DEMO=0 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found on PATH (Phantom needs Python >= 3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$PYTHON" -V 2>&1) is too old: Phantom needs Python >= 3.11"
PY_PATH=$(command -v "$PYTHON")

# --- 1. system packages ----------------------------------------------------------
# Tools the demo and the network-namespace tests drive, plus what the build needs.
PKGS=(iperf3 tcpdump iproute2 iptables conntrack wireguard-go wireguard-tools
      gcc procps libcap2-bin kmod iputils-ping ca-certificates strace
      chromium chromium-driver systemd
      postgresql nftables bind9-dnsutils dnsmasq-base)
# chromium + chromium-driver: the dashboard's browser tests (Selenium drives
# /usr/bin/chromedriver; nothing is downloaded); systemd: systemd-analyze
# verifies examples/phantomd@.service.
# postgresql: the directory's PostgreSQL store (its tests start their own cluster).
# nftables: `nft -j -f -`, which phantomd's privileged helper runs for its own table.
# bind9-dnsutils: dig, the reference client of the name service's tests (tests/e2e/dns).
# dnsmasq-base: the lab's "internet" resolver behind an exit node (tests/e2e/routes; no service).
# Debian's own python3 needs its venv and header packages; a pyenv or
# self-built python3 brings both with it.
PY_REAL=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
PY_INCLUDE=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
case "$PY_REAL" in
    /usr/bin/*) PKGS+=(python3-venv python3-dev) ;;
    *)
        "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || PKGS+=(python3-venv)
        [ -e "$PY_INCLUDE/Python.h" ] || PKGS+=(python3-dev)
        ;;
esac

MISSING=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        MISSING+=("$p")
    fi
done
if [ ${#MISSING[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        die "missing system packages: ${MISSING[*]} (run setup.sh as root, or apt-get install them)"
    fi
    say "installing system packages: ${MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
else
    say "system packages already installed"
fi

# --- 2. virtual environment -----------------------------------------------------------
VENV="$ROOT/.venv"
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "removing a broken or too old $VENV"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $PY_PATH ($("$PYTHON" -V 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi
PIP_LOG="$VENV/setup-pip.log"
: > "$PIP_LOG"
# pip's chatter goes to a log; on failure its tail is shown.
pip_install() {
    if ! "$VENV/bin/python" -m pip --disable-pip-version-check install "$@" >>"$PIP_LOG" 2>&1; then
        tail -n 40 "$PIP_LOG" >&2
        die "pip install $* failed (full log: $PIP_LOG)"
    fi
}

# --- 3. Phantom and its Python dependencies ------------------------------------------------
say "installing Python build tools"
pip_install --upgrade "pip>=23" "setuptools>=64" wheel "Cython>=3" cffi
say "installing phantom (editable) with the test, bench, postgres and dht extras"
# No build isolation: the build uses the Cython just installed, and repeated
# runs do not download a fresh build environment each time.
pip_install --no-build-isolation -e "$ROOT[test,bench,postgres,dht]"

# --- 4. the fast path, in place -----------------------------------------------------------
# Tests run from the repository root import ./phantom, so the compiled
# extension must sit beside the sources.
say "building phantom.fastpath._engine (and its test hooks, phantom.fastpath._testing)"
"$VENV/bin/python" setup.py -q build_ext --inplace 2>&1 | grep -v '^performance hint' || true
"$VENV/bin/python" -c 'import phantom.fastpath._engine, phantom.fastpath._testing' \
    || die "phantom.fastpath._engine or ._testing does not import after the build (see the messages above)"
"$VENV/bin/python" -c 'import phantom, phantom.fastpath._engine as e; print("    phantom", phantom.__version__, "with", e.__file__)'
"$VENV/bin/python" -c 'import phantomlab.netns' \
    || die "the lab package (phantomlab) does not import (see the pip log: $PIP_LOG)"

# --- 4b. the tests, compiled once ---------------------------------------------------------
# pytest compiles each test module with its assertion rewriting and keeps the
# result in __pycache__ (like the .pyc files pip writes for site-packages); done
# here once, so the suite's workers do not each rewrite every module at start.
# phantom and phantomlab too: a shell with PYTHONDONTWRITEBYTECODE set never
# writes their .pyc files, so every phantomd (and the modules only it imports:
# node/main, daemon, startup, controller, ...) would compile them at each start.
say "compiling phantom and phantomlab (.pyc), and the tests (pytest's assertion-rewrite cache)"
"$VENV/bin/python" -m compileall -q "$ROOT/phantom" "$ROOT/phantomlab" >/dev/null \
    || echo "    (compiling phantom failed; its modules are compiled at each import instead)"
(cd "$ROOT" && "$VENV/bin/python" -m pytest -q --collect-only -p no:cacheprovider >/dev/null 2>&1) \
    || echo "    (collecting the tests failed; they are compiled on their first run instead)"

say "ready: tests run with  .venv/bin/python -m pytest -q -ra -n 6 --dist loadgroup"

# --- 5. the demo ---------------------------------------------------------------------------
if [ "$RUN_DEMO" -eq 1 ]; then
    say "running the demo: .venv/bin/phantom demo"
    exec "$VENV/bin/phantom" demo
fi
