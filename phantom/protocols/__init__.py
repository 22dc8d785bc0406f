"""The handshake protocols a peer may speak, over shared machinery (sans-IO).

  phantom/      Phantom's Noise_IK over BLAKE2b, with cipher suite negotiation
  wireguard/    WireGuard v1's Noise_IKpsk2 over BLAKE2s, its keys and wg-quick files
  registry.py   one object per protocol, which the engine dispatches to

Neither protocol package imports the other; what they share is here.
"""
