"""NAT traversal, the peer's side: candidate endpoints and the path in use
(``paths``), and the coordinator the daemon calls (``traversal``)."""
