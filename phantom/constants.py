"""Protocol constants and implementation tunables, kept apart.

Protocol constants follow WireGuard's whitepaper section 6.1 where the
behaviour is the same; both peers must agree on them.  Tunables are this
implementation's choices and may be changed (tests shrink the timers through
``[tunables]`` in the config file).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

# --- protocol constants ---------------------------------------------------------
NOISE_PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"phantom v1"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

REKEY_AFTER_MESSAGES = 2 ** 60
REJECT_AFTER_MESSAGES = 2 ** 64 - 2 ** 13 - 1
REPLAY_WINDOW_SIZE = 8192 - 64       # RFC 6479 style, in bits; >= 2048 as required


@dataclass(frozen=True)
class Tunables:
    """Timer and queue settings (seconds unless noted)."""

    rekey_after_time: float = 120.0
    reject_after_time: float = 180.0
    rekey_attempt_time: float = 90.0
    rekey_timeout: float = 5.0
    keepalive_timeout: float = 10.0
    cookie_refresh_time: float = 120.0
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    handshake_jitter: float = 0.333     # max extra seconds added to each retry
    open_attempts: int = 6               # handshakes tried by `open` before it fails
    dead_retry_interval: float = 30.0    # a DEAD peer that should be up is retried this often
    timer_tick: float = 0.1              # control-plane tick period
    # a peer's endpoint given as a DNS name (node/endpoints.py), after
    # wg-quick's reresolve-dns.sh: looked up again every reresolve_interval
    # while its last handshake is older than reresolve_after (or it has none),
    # and when a series of handshake attempts gave up; each lookup is bounded
    reresolve_interval: float = 30.0
    reresolve_after: float = 135.0
    resolve_timeout: float = 5.0
    staged_packets: int = 128            # packets queued per peer while handshaking
    burst: int = 64                      # packets drained per fd wakeup
    under_load_initiations: int = 64     # initiations/s before cookies are demanded
    handshakes_per_second_per_source: float = 20.0
    handshake_burst_per_source: int = 5
    # a rendezvous forgets a registration not renewed for this long (clients
    # renew every REGISTER_INTERVAL s, so it must be longer than that); what
    # a member that left registered is passed on to no one after it
    registration_ttl: float = 20.0

    @classmethod
    def from_mapping(cls, values: dict) -> "Tunables":
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError("unknown tunable(s): %s" % ", ".join(sorted(unknown)))
        return replace(cls(), **values)


# how often a NAT traversal client renews its registration at a rendezvous
REGISTER_INTERVAL = 5.0

DEFAULT_TUNABLES = Tunables()
DEFAULT_HTTP_PORT = 4567
DEFAULT_UDP_PORT = 9000
DEFAULT_TEST_PORT = 8000
DEFAULT_MTU = 1420
