"""WireGuard v1 in the control plane (``[[peer]] protocol = "wireguard"``).

* :mod:`.symmetric` -- HASH, MAC, HMAC and KDF over BLAKE2s (whitepaper 5.4),
  on :mod:`hashlib`; DH and the AEADs come from libsodium (:mod:`phantom.crypto`);
* :mod:`.handshake` -- Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, sans-IO, in the
  whitepaper's own steps (5.4.2 - 5.4.5);
* :mod:`.cookie`    -- mac1/mac2 and cookie replies with BLAKE2s (5.4.4, 5.4.7),
  the shared mechanism (:mod:`phantom.protocols.cookie`) over WireGuard's MACs;
* :mod:`.protocol`  -- :class:`WireGuardHandshakes`, what the engine dispatches to
  (:mod:`phantom.protocols.registry`);
* :mod:`.keys`, :mod:`.wgquick` -- WireGuard's key text and wg-quick files.

The wire format is :mod:`phantom.wire.wireguard`; transport data is sealed by
the data paths (ChaCha20-Poly1305: :mod:`phantom.dataplane.ciphers` and the
fast path).  Nothing here imports :mod:`phantom.protocols.phantom`.
"""
