"""Run inside a namespace: try to overwrite a key's BEP 44 item on every given DHT
node with a put whose signature is wrong (raw KRPC), carrying a record that points
elsewhere.  Prints one JSON line per node: the node's answer.

    python -m phantomlab.dht_forger PUBLIC_KEY_B64 EVIL_ENDPOINT HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import sys
import time

import libtorrent as lt

from phantom import crypto
from phantom import directory as d
from phantom.directory.store.dht import SALT, dht_key_of


def krpc(sock, addr, msg):
    sock.sendto(lt.bencode(msg), addr)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65536)
        except socket.timeout:
            break
        reply = lt.bdecode(data)
        if isinstance(reply, dict) and reply.get(b"t") == msg[b"t"]:
            return reply
    return None


def main(argv):
    victim = base64.b64decode(argv[0])
    key = dht_key_of(victim)
    target = hashlib.sha1(key + SALT).digest()
    evil = d.make_record(d.NodeSigner(bytearray(crypto.x25519_private())), "forged", [argv[1]],
                         [], 2 ** 62, int(time.time()) + 600)
    evil["public_key"] = d.b64(victim)              # claims the victim's key: binding wrong too
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for spec in argv[2:]:
            host, port = spec.rsplit(":", 1)
            addr = (host, int(port))
            got = krpc(s, addr, {b"t": b"g1", b"y": b"q", b"q": b"get",
                                 b"a": {b"id": os.urandom(20), b"target": target}})
            if got is None or b"r" not in got:
                print(json.dumps({"node": spec, "answer": "no reply to get"}))
                continue
            reply = krpc(s, addr, {b"t": b"p1", b"y": b"q", b"q": b"put", b"a": {
                b"id": os.urandom(20), b"token": got[b"r"][b"token"], b"k": key, b"salt": SALT,
                b"seq": 2 ** 40, b"sig": os.urandom(64), b"v": d.canonical(evil)}})
            answer = None if reply is None else (
                ["error", reply[b"e"][0]] if reply.get(b"y") == b"e" else "accepted")
            print(json.dumps({"node": spec, "answer": answer}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
