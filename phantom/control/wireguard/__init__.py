"""WireGuard's front ends: the UAPI socket (``uapi``) and ``phantom wg`` (``cli``).

The protocol itself is :mod:`phantom.protocols.wireguard`."""
