#!/usr/bin/env python3
"""Handshake load generator: many keys, many source addresses, one responder.

    hsload.py --proto phantom|wireguard --hub IP:PORT --hub-pub B64 \\
              --keys FILE --sources CIDR[,CIDR] [--seconds 5] [--window 256]

Speaks just enough of each protocol to make a responder work: it sends
handshake *initiations* from ``--keys`` (one private key a line, base64: the
responder must know the matching public keys as peers), spread over many
source IP addresses (one UDP socket bound to each address of ``--sources``,
because both responders rate-limit per source IP under load), and counts the
handshake *responses* that come back.  Closed loop: at most ``--window``
initiations are in flight; each response, or a timeout (``--timeout``, the
initiation counted as lost), lets the next one go.  Handshakes per second is
the number of responses received in the measured interval (after
``--warmup``) divided by its length.

Both responders demand cookies under load.  A cookie reply is decrypted
(XChaCha20-Poly1305, keyed from the responder's static key, the mac1 of our
initiation as associated data) and the same initiation is sent again with
mac2; later initiations from that source carry mac2 at once (a cookie is
bound to the source address and lives two minutes, longer than a run).

Initiations are cheap to make: per key, the Noise state after "e, es, s,
ss" is computed once (two X25519 with a fixed ephemeral key; responders keep
no memory of ephemerals), and each initiation only encrypts a fresh
timestamp under a copy of it.  A pool of initiations is built before the
measurement, so the generator's own CPU during the run is socket work.
Timestamps increase per key in the order initiations are sent (each key
appears once per round), as both responders require.

* ``phantom``: phantom/protocols/phantom/handshake.py's message (Noise_IK_25519_
  ChaChaPoly_BLAKE2b, TAI64N + client nonce payload) via phantom.protocols.phantom.noise
  and phantom.protocols.cookie (mac1/mac2/cookie replies);
* ``wireguard``: WireGuard's (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, the
  whitepaper's section 5.4.2), mac1/mac2 and cookie replies of section 5.4.7,
  written out here against hashlib and PyNaCl.

Prints one JSON object on stdout.  Used by bench/scale.py (which runs it in
the clients' namespace); runnable alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ipaddress
import json
import os
import resource
import selectors
import socket
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import nacl.bindings as nb  # noqa: E402

from phantom import crypto, wire  # noqa: E402
from phantom.protocols.phantom import cookie as ck  # noqa: E402
from phantom.protocols.phantom import noise as nz  # noqa: E402
from phantom.protocols import tai64n  # noqa: E402


# ---------------------------------------------------------------- phantom
class PhantomProto:
    name = "phantom"
    init_size = wire.INITIATION_SIZE

    def __init__(self, hub_pub: bytes, offer: bool = False, attachment: bytes | None = None):
        """``offer``: the 166-byte form (a suites offer: secretbox);
        ``attachment``: after the offer, a membership-sized attachment
        (169..1192 bytes in all)."""
        self.hub_pub = hub_pub
        self.mac1_key = ck.mac1_key(hub_pub)
        self.cookie_key = ck.cookie_key(hub_pub)
        self.extra = b""
        if offer or attachment is not None:
            self.extra = wire.SUITES_FIELD.pack(wire.suites_mask((wire.Suite.SECRETBOX,)))
        if attachment is not None:
            self.extra += wire.ATTACHMENT_LENGTH.pack(len(attachment)) + attachment
        self.init_size = wire.INITIATION_SIZE + len(self.extra)

    def template(self, priv: bytes):
        """The initiator's Noise state after e, es, s, ss (fixed ephemeral)."""
        eph = crypto.x25519_private()
        n = nz.NoiseIK.initiator(priv, self.hub_pub, eph)
        ss = n._ss
        e_pub = n._make_ephemeral()
        ss.mix_hash(e_pub)
        ss.mix_key(nz.dh(n._e, n._rs))
        enc_s = ss.encrypt_and_hash(n._s_pub)
        ss.mix_key(nz.dh(n._s, n._rs))
        return (ss, e_pub, enc_s)

    def initiation(self, tpl, sender: int, ts_ns: int) -> bytes:
        ss, e_pub, enc_s = tpl
        w = ss.copy()
        ts = tai64n.encode(ts_ns // 10 ** 9, ts_ns % 10 ** 9)
        payload = w.encrypt_and_hash(ts + os.urandom(wire.CLIENT_NONCE_SIZE) + self.extra)
        msg = wire.Initiation(sender, e_pub, enc_s, payload).pack()
        mac1 = ck.mac(self.mac1_key, wire.mac1_region(msg))
        return wire.with_macs(msg, mac1, bytes(wire.MAC_SIZE))

    def with_mac2(self, msg: bytes, cookie: bytes) -> bytes:
        return wire.with_macs(msg, wire.mac1_of(msg), ck.mac(cookie, wire.mac2_region(msg)))

    def classify(self, data: bytes):
        """('response', receiver) | ('cookie', receiver, nonce, sealed) | None."""
        if len(data) == wire.RESPONSE_SIZE and data[0] == 2:
            return ("response", wire.Response.unpack(data).receiver_index)
        if len(data) == wire.COOKIE_REPLY_SIZE and data[0] == 3:
            r = wire.CookieReply.unpack(data)
            return ("cookie", r.receiver_index, r.nonce, r.encrypted_cookie)
        return None

    def open_cookie(self, nonce: bytes, sealed: bytes, msg: bytes) -> bytes:
        return crypto.xaead_decrypt(self.cookie_key, nonce, wire.mac1_of(msg), sealed)


# -------------------------------------------------------------- wireguard
_WG_CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
_WG_IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
_WG_INIT = struct.Struct("<I I 32s 48s 28s")          # type(+3 reserved), sender, e, s, ts
_WG_INIT_SIZE = 148
_TAI64_BASE = 0x400000000000000A


def _h(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf(ck_: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = _hmac(ck_, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = _hmac(t0, prev + bytes([i]))
        out.append(prev)
    return out


def _aead(key: bytes, counter: int, pt: bytes, ad: bytes) -> bytes:
    return nb.crypto_aead_chacha20poly1305_ietf_encrypt(pt, ad, bytes(4) + struct.pack("<Q", counter), key)


class WireGuardProto:
    name = "wireguard"
    init_size = _WG_INIT_SIZE

    def __init__(self, hub_pub: bytes):
        self.hub_pub = hub_pub
        self.mac1_key = _h(b"mac1----", hub_pub)
        self.cookie_key = _h(b"cookie--", hub_pub)
        c = _h(_WG_CONSTRUCTION)
        self._c0 = c
        self._h0 = _h(_h(c, _WG_IDENTIFIER), hub_pub)

    def template(self, priv: bytes):
        e_priv = crypto.x25519_private()
        e_pub = nb.crypto_scalarmult_base(e_priv)
        s_pub = nb.crypto_scalarmult_base(priv)
        c = _kdf(self._c0, e_pub, 1)[0]
        h = _h(self._h0, e_pub)
        c, k = _kdf(c, nb.crypto_scalarmult(e_priv, self.hub_pub), 2)
        enc_s = _aead(k, 0, s_pub, h)
        h = _h(h, enc_s)
        c, k = _kdf(c, nb.crypto_scalarmult(priv, self.hub_pub), 2)
        return (k, h, e_pub, enc_s)

    def initiation(self, tpl, sender: int, ts_ns: int) -> bytes:
        k, h, e_pub, enc_s = tpl
        ts = struct.pack(">QI", _TAI64_BASE + ts_ns // 10 ** 9, ts_ns % 10 ** 9)
        enc_ts = _aead(k, 0, ts, h)
        body = _WG_INIT.pack(1, sender, e_pub, enc_s, enc_ts)
        return body + _mac(self.mac1_key, body) + bytes(16)

    def with_mac2(self, msg: bytes, cookie: bytes) -> bytes:
        return msg[:132] + _mac(cookie, msg[:132])

    def classify(self, data: bytes):
        if len(data) == 92 and data[0] == 2:
            return ("response", struct.unpack_from("<I", data, 8)[0])
        if len(data) == 64 and data[0] == 3:
            return ("cookie", struct.unpack_from("<I", data, 4)[0], data[8:32], data[32:64])
        return None

    def open_cookie(self, nonce: bytes, sealed: bytes, msg: bytes) -> bytes:
        return nb.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, msg[116:132], nonce, self.cookie_key)


PROTOS = {"phantom": PhantomProto, "wireguard": WireGuardProto}


# ------------------------------------------------------------------- load
def source_addresses(spec: str, limit: int) -> list[str]:
    out: list[str] = []
    for cidr in spec.split(","):
        net = ipaddress.ip_network(cidr.strip(), strict=False)
        for a in (net.hosts() if net.num_addresses > 2 else net):
            out.append(str(a))
            if len(out) >= limit:
                return out
    return out


def build_pool(proto, privs: list[bytes], size: int, t0_ns: int) -> list[bytes]:
    """``size`` initiations, round-major over the keys; timestamps increase by
    1 us per message (so per key in send order).  Sender index = position + 1."""
    tpls = [proto.template(p) for p in privs]
    pool = []
    for i in range(size):
        pool.append(proto.initiation(tpls[i % len(tpls)], i + 1, t0_ns + i * 1000))
    return pool


def run(proto, hub: tuple, privs: list[bytes], sources: list[str], seconds: float, window: int,
        warmup: float, timeout: float, pool_size: int, rcvbuf: int = 1 << 20) -> dict:
    t_build = time.monotonic()
    pool = build_pool(proto, privs, pool_size, time.time_ns())
    build_s = time.monotonic() - t_build
    socks = []
    sel = selectors.DefaultSelector()
    for i, ip in enumerate(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((ip, 0))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
    cookies: list = [None] * len(socks)
    inflight: dict[int, list] = {}         # sender index -> [sock, t_sent]
    order: list = []                       # (t_sent, sender) for timeouts, oldest first
    nxt = 0
    sent = resent = responses = counted = cookie_replies = lost = late = unknown = 0
    start = time.monotonic()
    cpu0 = time.process_time()
    m0, m1 = start + warmup, start + warmup + seconds
    first_counted = last_counted = None
    exhausted = False

    def send(idx: int, si: int, now: float) -> None:
        msg = pool[idx]
        c = cookies[si]
        if c is not None:
            msg = proto.with_mac2(msg, c)
        try:
            socks[si].sendto(msg, hub)
        except (BlockingIOError, OSError):
            pass
        inflight[idx + 1] = [si, now]
        order.append((now, idx + 1))

    head = 0
    now = start
    while now < m1:
        while len(inflight) < window:
            if nxt >= len(pool):
                exhausted = True
                break
            send(nxt, nxt % len(socks), now)
            sent += 1
            nxt += 1
        for key, _ev in sel.select(0.005):
            s = key.fileobj
            si = key.data
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                what = proto.classify(data)
                if what is None:
                    unknown += 1
                    continue
                entry = inflight.get(what[1])
                if what[0] == "response":
                    if entry is None:
                        late += 1
                        continue
                    del inflight[what[1]]
                    responses += 1
                    t = time.monotonic()
                    if m0 <= t < m1:
                        counted += 1
                        first_counted = first_counted or t
                        last_counted = t
                else:
                    cookie_replies += 1
                    if entry is None:
                        continue
                    try:
                        cookies[si] = proto.open_cookie(what[2], what[3], pool[what[1] - 1])
                    except Exception:
                        unknown += 1
                        continue
                    del inflight[what[1]]
                    send(what[1] - 1, si, time.monotonic())
                    resent += 1
        now = time.monotonic()
        # time out the oldest in flight
        while head < len(order) and order[head][0] < now - timeout:
            _t, sender = order[head]
            head += 1
            e = inflight.get(sender)
            if e is not None and e[1] <= _t:
                del inflight[sender]
                lost += 1
        if head > 100000:
            del order[:head]
            head = 0
        if exhausted and not inflight:
            break
    measured = min(now, m1) - m0
    cpu_used = time.process_time() - cpu0
    for s in socks:
        s.close()
    return {
        "proto": proto.name, "hub": "%s:%d" % hub, "keys": len(privs), "sources": len(socks),
        "window": window, "warmup_s": warmup, "seconds": round(measured, 3),
        "handshakes_per_s": round(counted / measured, 1) if measured > 0 else None,
        "initiations_sent": sent, "resent_with_mac2": resent, "responses": responses,
        "cookie_replies": cookie_replies, "lost": lost, "late_responses": late,
        "unparsed": unknown, "pool": len(pool), "pool_exhausted": exhausted,
        "pool_build_s": round(build_s, 2),
        # the generator's own CPU over warm-up + measurement: near 100 % means
        # it, not the responder, may be the limit
        "generator_cpu_percent": round(100 * cpu_used / max(1e-9, now - start), 1),
    }


def load_keys(path: str, limit: int) -> list[bytes]:
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            out.append(base64.b64decode(line))
            if len(out) >= limit:
                break
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proto", choices=sorted(PROTOS), required=True)
    p.add_argument("--hub", required=True, help="IP:PORT of the responder")
    p.add_argument("--hub-pub", required=True, help="the responder's public key, base64")
    p.add_argument("--keys", required=True, help="file: initiator private keys, base64, one a line")
    p.add_argument("--max-keys", type=int, default=10000)
    p.add_argument("--sources", required=True, help="CIDR(s) of local addresses to send from")
    p.add_argument("--max-sources", type=int, default=512)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--pool", type=int, default=0,
                   help="initiations to prebuild (default: enough for 25,000/s)")
    a = p.parse_args(argv)
    host, port = a.hub.rsplit(":", 1)
    proto = PROTOS[a.proto](base64.b64decode(a.hub_pub))
    privs = load_keys(a.keys, a.max_keys)
    sources = source_addresses(a.sources, a.max_sources)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < len(sources) + 64:            # a socket per source address
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(len(sources) + 64, hard), hard))
    pool = a.pool or int(25000 * (a.seconds + a.warmup)) + a.window
    res = run(proto, (host, int(port)), privs, sources, a.seconds, a.window, a.warmup, a.timeout, pool)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
