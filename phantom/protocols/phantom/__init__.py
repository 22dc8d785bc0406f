"""Phantom's own handshake: Noise_IK_25519_ChaChaPoly_BLAKE2b (``noise``), framed
and negotiating the transport suite (``handshake``).  Wire format:
:mod:`phantom.wire.phantom`."""
