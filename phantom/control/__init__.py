"""The control plane: handshake, timers, peers, config, keys, HTTP API, key directory."""
