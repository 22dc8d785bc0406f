"""Shared pieces of the fuzz harnesses: fixed keys, the fixed clock, the
contract check.

Every harness is a script ``fuzz/fuzz_<target>.py`` that defines
``TestOneInput(data: bytes)`` and ``ALLOWED`` (the documented exception types
of its target).  ``TestOneInput`` lets nothing but ALLOWED escape from the
code under test (it catches them), and asserts the target's contract; any
other exception -- including an AssertionError from a contract check -- is a
crash for atheris/libFuzzer.  ``fuzz/run.py`` runs them; ``tests/fuzz/test_fuzz.py``
replays the committed corpus in-process and runs each harness for a few
seconds.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:            # run as a script from anywhere
    sys.path.insert(0, ROOT)

TARGETS = ("wire", "handshake", "firewall", "directory", "dns", "network")

# Fixed keys, so that the committed corpus (valid messages, signed records)
# stays valid for the harness that reads it.  Test keys only.
RESPONDER_PRIV = bytes(range(1, 33))          # the daemon under test
INITIATOR_PRIV = bytes(range(101, 133))       # a peer it knows
STRANGER_PRIV = bytes(range(201, 233))        # a key it does not know
SIGNER_PRIV = bytes(range(33, 65))            # a directory endorser

# The harnesses' wall clock: records in the corpus expire an hour after it.
NOW = 1_800_000_000.0
PEER_ADDR = ("192.0.2.7", 51820)

# The network target's keys (Ed25519 seeds) and its one network and member.
NETWORK_AUTHORITY_SEED = bytes(range(65, 97))
NETWORK_ADMISSION_SEED = bytes(range(97, 129))


def network_definition(n, authority, admission):
    """The corpus network (phantom.network as ``n``): fixed prefixes and times."""
    day = 86400
    return n.make_definition(
        authority, "corp", NOW - day, ipv4="100.87.0.0/16", ipv6="fd3c:9a41:7e02::/48",
        directory=["https://dir.example.com"],
        rendezvous=[(bytes(range(2, 34)), "198.51.100.1:51820")],
        relays=[(bytes(range(3, 35)), "relay.example.com:51821")],
        admission=[(admission.public, int(NOW) + 365 * day)])


def network_invite(n, definition):
    """The corpus invite (token, record): fixed id and secret, 2 uses, a day long."""
    fixed = iter(range(256))
    return n.create_invite(definition, NOW, uses=2, groups=["laptops"],
                           random_bytes=lambda k: bytes(next(fixed) for _ in range(k)))


def network_node():
    """The joining node: (X25519 public key, its Ed25519 form, sign).  Made
    from an Ed25519 seed with libsodium's map, which gives the same pair of
    keys NodeSigner derives from an X25519 private key."""
    import nacl.bindings
    from nacl.signing import SigningKey
    sk = SigningKey(bytes(range(129, 161)))
    ed = bytes(sk.verify_key)
    return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed), ed, \
        (lambda message: sk.sign(message).signature)


def network_member(n, definition, admission):
    """The corpus member: INITIATOR_PRIV's key, valid at NOW."""
    from phantom import crypto
    return n.issue_certificate(definition, admission, key=crypto.x25519_public(INITIATOR_PRIV),
                               name="alice", ipv4="100.87.0.1", ipv6="fd3c:9a41:7e02::6457:1",
                               serial=1, now=NOW - 60, groups=["laptops"])


def corpus_dir(target: str) -> str:
    return os.path.join(HERE, "corpus", target)


def main(test_one_input, argv=None) -> None:
    """atheris' entry point for a harness script (libFuzzer flags in argv)."""
    import atheris
    argv = list(sys.argv if argv is None else argv)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
