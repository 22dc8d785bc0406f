"""The rendezvous role: where peers behind NATs find each other (sans-IO)."""
