"""Key generation, key files (0600, owner checks) and key hygiene in logs."""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
import stat
import subprocess
import sys

import pytest

from phantom import crypto, logsetup
from phantom import keys
from phantom.errors import ConfigError
from tests.support import REPO



def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "phantom.cli", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_genkey_pubkey_pipe_like_wg():
    priv = run_cli("genkey")
    assert priv.returncode == 0, priv.stderr
    text = priv.stdout.strip()
    assert len(text) == 44 and len(base64.b64decode(text)) == 32
    pub = run_cli("pubkey", stdin=priv.stdout)
    assert pub.returncode == 0, pub.stderr
    public = base64.b64decode(pub.stdout.strip())
    assert public == crypto.x25519_public(base64.b64decode(text))
    assert pub.stdout.strip() != text


def test_console_script_if_installed():
    script = shutil.which("phantom", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the phantom console script is not installed next to this python")
    priv = subprocess.run([script, "genkey"], capture_output=True, text=True, timeout=60)
    pub = subprocess.run([script, "pubkey"], input=priv.stdout, capture_output=True, text=True,
                         timeout=60)
    assert pub.returncode == 0 and len(base64.b64decode(pub.stdout.strip())) == 32


def test_pubkey_matches_a_known_vector():
    # RFC 7748 section 6.1: Alice's private and public X25519 keys.
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    alice_pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert keys.pubkey(base64.b64encode(alice).decode()) == base64.b64encode(alice_pub).decode()


def test_pubkey_rejects_garbage():
    proc = run_cli("pubkey", stdin="not a key\n")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "base64" in proc.stderr


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("abc", "base64"),
    (base64.b64encode(bytes(16)).decode(), "16 bytes"),
    (base64.b64encode(bytes(32)).decode(), "all zeros"),
    (12, "base64 string"),
])
def test_decode_public_key_errors(text, reason):
    with pytest.raises(keys.KeyFormatError) as info:
        keys.decode_public_key(text)
    assert reason in str(info.value)


def test_write_private_key_is_0600_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        key = keys.write_private_key(tmp_path / "k")
    finally:
        os.umask(old)
    st = os.stat(tmp_path / "k")
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert isinstance(key, bytearray) and len(key) == 32
    assert keys.load_private_key(tmp_path / "k") == key
    assert [p.name for p in tmp_path.iterdir()] == ["k"]        # no temporary left behind


def test_write_private_key_never_overwrites(tmp_path):
    path = tmp_path / "k"
    path.write_text("precious\n")
    with pytest.raises(FileExistsError):
        keys.write_private_key(path)
    assert path.read_text() == "precious\n"


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "k"
    keys.write_private_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(path)
    message = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert "0644" in message and "readable" in message and "chmod 600" in message


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660])
def test_group_or_other_access_is_refused(tmp_path, mode):
    path = tmp_path / "k"
    keys.write_private_key(path)
    os.chmod(path, mode)
    with pytest.raises(keys.KeyFileError):
        keys.load_private_key(path)


def test_key_file_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown a file to another user")
    path = tmp_path / "k"
    keys.write_private_key(path)
    os.chown(path, 65534, 65534)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(path)
    assert "owned by" in str(info.value)


def test_missing_and_malformed_key_files(tmp_path):
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(tmp_path / "absent")
    assert "phantom genkey" in str(info.value)
    bad = tmp_path / "bad"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"hello\n")
    os.close(fd)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(bad)
    assert "base64" in str(info.value)
    with pytest.raises(keys.KeyFileError):
        keys.load_private_key(tmp_path)          # a directory


def test_symlinked_key_file_is_refused(tmp_path):
    keys.write_private_key(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(keys.KeyFileError):
        keys.load_private_key(tmp_path / "link")


def test_load_or_create_private_key(tmp_path):
    path = tmp_path / "state" / "private.key"
    first = keys.load_or_create_private_key(path)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert keys.load_or_create_private_key(path) == first


def test_genkey_out_writes_0600_and_prints_the_public_key(tmp_path):
    path = tmp_path / "k"
    proc = run_cli("genkey", "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    private = path.read_text().strip()
    assert proc.stdout.strip() == keys.pubkey(private) and private not in proc.stdout
    again = run_cli("genkey", "--out", str(path))
    assert again.returncode == 1 and "already exists" in again.stderr


# --- logging ------------------------------------------------------------------------------------
def _capture(level="debug"):
    stream = io.StringIO()
    logsetup.setup_logging(level, stream=stream)
    return stream


def test_log_lines_name_component_and_peer():
    stream = _capture("info")
    log = logsetup.get_logger("handshake")
    logsetup.peer_logger(log, "alice").info("session established\nsecond line")
    log.debug("hidden at info")
    logsetup.get_logger("api").warning("plain %s", "event")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert " INFO    handshake peer=alice: session established\\nsecond line" in lines[0]
    assert lines[1].endswith("WARNING api: plain event")
    assert lines[0][:4].isdigit() and "T" in lines[0].split()[0]


def test_exceptions_stay_on_one_line():
    stream = _capture("debug")
    try:
        raise ValueError("bad thing")
    except ValueError:
        logsetup.get_logger("x").exception("failed")
    out = stream.getvalue()
    assert out.count("\n") == 1 and "ValueError: bad thing" in out


def test_private_keys_never_reach_the_log():
    stream = _capture("debug")
    key = keys.decode_private_key(keys.genkey())
    b64 = base64.b64encode(key).decode()
    log = logsetup.get_logger("keys")
    log.info("key is %s", b64)
    log.info("hex %s", key.hex())
    log.info("raw %r", key)
    log.info("urlsafe %s", base64.urlsafe_b64encode(key).decode())
    public = base64.b64encode(keys.public_key(key)).decode()
    log.info("public %s", public)
    out = stream.getvalue()
    assert b64 not in out and key.hex() not in out
    assert base64.urlsafe_b64encode(key).decode() not in out
    assert out.count(logsetup.REDACTED) == 3 and "<32 bytes>" in out
    assert public in out                     # public keys are fine to log


def test_invalid_level_is_refused():
    with pytest.raises(ValueError):
        logsetup.setup_logging("chatty")


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_phantom", False):
            root.removeHandler(h)
