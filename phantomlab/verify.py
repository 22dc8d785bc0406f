"""``phantom verify``: is the tunnel really encrypted on the wire?

The prototype's sniffer check as a user command.  Run it as root on the
daemon's host (tcpdump needs CAP_NET_RAW):

    phantom verify bob                  # a peer's name or public key
    phantom verify bob --seconds 5 --interface eth0

It asks the daemon (read-only API, no token) for its UDP port and the peer's
allowed IPs, starts ``tcpdump`` on the daemon's outer traffic (``udp port
<listen_port>``), sends a random marker through the peer's tunnel a number
of times (a UDP datagram to the peer's first allowed IP, port 9 "discard";
in test mode to the daemon's test port), stops the capture and reports:

* plaintext: whether the marker (its random part, in any captured frame)
  crossed the wire: it never may;
* randomness: the share of the captured payloads whose encrypted part looks
  random (per payload: enough distinct byte values for its length, no
  compression by zlib, and for 256 bytes and more a byte-frequency
  chi-square within 6 standard deviations of uniform);
* what was captured: transport, handshake, cookie and other datagrams.

Exit status: 0 no plaintext (and tunnel traffic was seen), 1 plaintext seen,
3 inconclusive (nothing crossed the wire: the tunnel carried nothing),
2 usage or set-up errors (no tcpdump, no such peer, daemon unreachable).

``--listen-port`` and ``--send-to IP:PORT`` replace what the API would say
(with both, no daemon is asked): that is how the tests point it at a
deliberately unencrypted UDP relay and check that it is caught.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

MARKER_PREFIX = b"PHANTOM-VERIFY-"
DISCARD_PORT = 9

EXIT_OK = 0
EXIT_PLAINTEXT = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3

# Message types of the wire format (phantom/wire.py) and the byte ranges that
# are ciphertext or fresh keys, i.e. must look random.
_INITIATION, _RESPONSE, _COOKIE, _TRANSPORT = 1, 2, 3, 4
_RANDOM_PART = {_INITIATION: (8, 116), _RESPONSE: (12, 60), _COOKIE: (8, 64), _TRANSPORT: (16, None)}
_KIND = {_INITIATION: "handshake", _RESPONSE: "handshake", _COOKIE: "cookie", _TRANSPORT: "transport"}
MIN_RANDOM_LEN = 16


# --- the randomness test ------------------------------------------------------------------------
def expected_distinct(n: int) -> float:
    """Expected number of distinct values among n uniform random bytes."""
    return 256.0 * (1.0 - (255.0 / 256.0) ** n)


def looks_random(b: bytes) -> Optional[bool]:
    """True when ``b`` could be ciphertext, False when it clearly is not,
    None when it is too short to say (fewer than 16 bytes)."""
    n = len(b)
    if n < MIN_RANDOM_LEN:
        return None
    if len(set(b)) < 0.75 * expected_distinct(n):
        return False
    if n >= 64 and len(zlib.compress(b, 9)) < n:
        return False
    if n >= 256:
        counts = [0] * 256
        for x in b:
            counts[x] += 1
        e = n / 256.0
        chi2 = sum((c - e) ** 2 for c in counts) / e
        if chi2 > 255 + 6 * math.sqrt(2 * 255):
            return False
    return True


def classify(payload: bytes) -> tuple[str, bytes]:
    """(kind, the part that must look random) of one UDP payload."""
    if len(payload) >= 4 and payload[0] in _RANDOM_PART and payload[1:4] == b"\0\0\0":
        t = payload[0]
        lo, hi = _RANDOM_PART[t]
        sizes = {_INITIATION: 148, _RESPONSE: 92, _COOKIE: 64}
        if t == _TRANSPORT and len(payload) >= 32 or t != _TRANSPORT and len(payload) == sizes[t]:
            return _KIND[t], payload[lo:hi]
    return "other", payload


@dataclass
class Report:
    peer: Optional[str]
    listen_port: int
    interface: str
    seconds: float
    sent_to: str
    markers_sent: int = 0
    marker: str = ""
    captured: int = 0
    kinds: dict = field(default_factory=dict)
    random: int = 0
    not_random: int = 0
    too_short: int = 0
    plaintext_frames: int = 0
    first_plaintext: Optional[str] = None

    @property
    def random_share(self) -> Optional[float]:
        judged = self.random + self.not_random
        return self.random / judged if judged else None

    @property
    def verdict(self) -> str:
        if self.plaintext_frames:
            return "plaintext"
        if not self.captured:
            return "inconclusive"
        return "no plaintext"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["random_share"] = self.random_share
        d["verdict"] = self.verdict
        return d

    def text(self) -> str:
        share = self.random_share
        lines = [
            "phantom verify: %s, udp port %d on %s, %.1f s"
            % ("peer %s" % self.peer if self.peer else "no peer", self.listen_port,
               self.interface, self.seconds),
            "  sent %d marker datagrams to %s (marker %s)" % (self.markers_sent, self.sent_to,
                                                             self.marker),
            "  captured %d datagrams: %s" % (self.captured, ", ".join(
                "%d %s" % (n, k) for k, n in sorted(self.kinds.items())) or "none"),
        ]
        if self.plaintext_frames:
            lines.append("  PLAINTEXT: the marker crossed the wire in %d frame(s), e.g. %s"
                         % (self.plaintext_frames, self.first_plaintext))
        else:
            lines.append("  plaintext: none (the marker never appeared on the wire)")
        if share is None:
            lines.append("  random-looking payloads: nothing long enough to judge")
        else:
            lines.append("  random-looking payloads: %d of %d (%.1f%%)%s"
                         % (self.random, self.random + self.not_random, 100 * share,
                            ", %d too short to judge" % self.too_short if self.too_short else ""))
        if self.verdict == "inconclusive":
            lines.append("  verdict: inconclusive: nothing crossed the wire (is the tunnel up? "
                         "is this the daemon's host and interface?)")
        else:
            lines.append("  verdict: %s" % self.verdict)
        return "\n".join(lines)


def analyse(packets, marker: bytes, listen_port: int, report: Report) -> Report:
    """Fill ``report`` from captured frames (phantomlab.netns.Packet objects)."""
    token = marker[len(MARKER_PREFIX):]
    for p in packets:
        if token in p.data or marker in p.data:
            report.plaintext_frames += 1
            if report.first_plaintext is None:
                u = p.udp()
                report.first_plaintext = ("udp %s:%d -> %s:%d" % (u.src, u.sport, u.dst, u.dport)
                                          if u else "a non-UDP frame")
        u = p.udp()
        if u is None or listen_port not in (u.sport, u.dport):
            continue
        report.captured += 1
        kind, part = classify(u.payload)
        report.kinds[kind] = report.kinds.get(kind, 0) + 1
        r = looks_random(part)
        if r is None:
            report.too_short += 1
        elif r:
            report.random += 1
        else:
            report.not_random += 1
    return report


# --- capture ------------------------------------------------------------------------------------
class Capture:
    """tcpdump writing a pcap file; ``stop()`` returns the frames."""

    def __init__(self, interface: str, bpf: str, ready_timeout: float = 5.0):
        self.interface = interface
        self.bpf = bpf
        self.ready_timeout = ready_timeout
        self.dir = tempfile.TemporaryDirectory(prefix="phantom-verify-")
        self.path = Path(self.dir.name) / "capture.pcap"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Capture":
        exe = shutil.which("tcpdump") or ("/usr/bin/tcpdump" if os.path.exists("/usr/bin/tcpdump")
                                          else None)
        if exe is None:
            raise VerifyError("tcpdump is not installed (apt-get install tcpdump)")
        argv = [exe, "-i", self.interface, "-n", "-U", "--immediate-mode", "-s", "0",
                "-Z", "root", "-w", str(self.path), self.bpf]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        import select
        buf = b""
        deadline = time.monotonic() + self.ready_timeout
        while b"listening on" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._kill()
                raise VerifyError("tcpdump did not start on %s: %s" % (
                    self.interface, buf.decode(errors="replace").strip() or "timed out"))
            r, _, _ = select.select([self.proc.stderr], [], [], left)
            if r:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                buf += chunk
        return self

    def _kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGINT)       # tcpdump flushes on SIGINT
            self.proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)

    def stop(self) -> list:
        from phantomlab.capture import read_pcap
        time.sleep(0.3)                                   # late packets reach the file
        self._kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        try:
            return read_pcap(self.path.read_bytes())
        except FileNotFoundError:
            return []
        finally:
            self.dir.cleanup()


class VerifyError(Exception):
    pass


# --- what to send, where ------------------------------------------------------------------------
def _target_from_api(args) -> tuple[Optional[str], int, tuple]:
    """(peer name, listen port, (ip, port) to send the marker to) from the daemon."""
    from phantom.cli.main import ApiClient, CliError
    try:
        client = ApiClient(args.api, args.socket, args.token_file, timeout=args.timeout)
        st = client.request("GET", "/status")
    except CliError as exc:
        raise VerifyError(str(exc)) from None
    peers = st.get("peers", [])
    peer = None
    for p in peers:
        if args.peer in (p.get("name"), p.get("public_key")):
            peer = p
    if args.peer and peer is None:
        raise VerifyError("no peer %r (the daemon has: %s)" % (
            args.peer, ", ".join(p.get("name", "?") for p in peers) or "none"))
    listen_port = args.listen_port or st["listen_port"]
    if args.send_to:
        return (peer or {}).get("name"), listen_port, args.send_to
    if peer is None:
        raise VerifyError("name the peer whose tunnel to test (or give --send-to IP:PORT)")
    if st.get("mode") == "test":
        return peer["name"], listen_port, ("127.0.0.1", int(st["test_port"]))
    for cidr in peer.get("allowed_ips", []):
        net = ipaddress.ip_network(cidr)
        host = net.network_address if net.num_addresses <= 2 else net.network_address + 1
        return peer["name"], listen_port, (str(host), DISCARD_PORT)
    raise VerifyError("peer %s has no allowed IPs: nothing can be routed into its tunnel; "
                      "give --send-to IP:PORT" % peer["name"])


def _endpoint(text: str) -> tuple:
    from phantom.errors import ConfigError
    from phantom.syntax import parse_endpoint
    try:
        return parse_endpoint(text, "--send-to")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> Report:
    if args.listen_port and args.send_to:
        peer, listen_port, dest = args.peer, args.listen_port, args.send_to
    else:
        peer, listen_port, dest = _target_from_api(args)
    token = secrets.token_hex(16).encode()
    marker = MARKER_PREFIX + token
    report = Report(peer, listen_port, args.interface, args.seconds,
                    "%s:%d" % dest if ":" not in dest[0] else "[%s]:%d" % dest,
                    marker=marker.decode())
    family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
    cap = Capture(args.interface, "udp port %d" % listen_port).start()
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            interval = args.seconds / max(1, args.count)
            start = time.monotonic()
            for i in range(args.count):
                try:
                    s.sendto(marker + b" #%d " % i + marker, dest)
                    report.markers_sent += 1
                except OSError:
                    pass               # no route yet, ICMP unreachable from a closed port: go on
                delay = start + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    finally:
        packets = cap.stop()
    return analyse(packets, marker, listen_port, report)


def build_parser() -> argparse.ArgumentParser:
    from phantom.cli.main import _api_options
    p = argparse.ArgumentParser(prog="phantom verify",
                                description="Capture the daemon's outer traffic while sending a "
                                            "random marker through a peer's tunnel; report "
                                            "plaintext and randomness. Run as root on the "
                                            "daemon's host.")
    _api_options(p, suppress=False)
    p.add_argument("peer", nargs="?", help="the peer's name or public key")
    p.add_argument("--seconds", type=float, default=3.0, help="capture this long (default 3)")
    p.add_argument("--count", type=int, default=30, help="marker datagrams to send (default 30)")
    p.add_argument("--interface", "-i", default="any",
                   help="where to capture (default any: every interface)")
    p.add_argument("--listen-port", type=int, metavar="PORT",
                   help="the daemon's UDP port (default: ask the daemon)")
    p.add_argument("--send-to", type=_endpoint, metavar="IP:PORT",
                   help="send the marker here instead of into the peer's allowed IPs")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.seconds <= 0 or args.seconds > 600 or args.count < 1 or args.count > 100000:
        print("phantom verify: --seconds must be in (0, 600] and --count in [1, 100000]",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        report = run(args)
    except VerifyError as exc:
        print("phantom verify: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    if report.verdict == "plaintext":
        return EXIT_PLAINTEXT
    if report.verdict == "inconclusive":
        return EXIT_INCONCLUSIVE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
