"""The rendezvous role: where peers behind NATs find each other (sans-IO).

  server.py     RendezvousServer: registrations, where-is, punch requests (a rendezvous node)
  client.py     RendezvousClient: registering, asking, checking the answers (every peer)
  endpoints.py  the endpoint checks both sides apply

The daemon drives both through :mod:`phantom.nat.traversal`; the pairs a
rendezvous that also relays forwards between are :mod:`phantom.relay`.
"""

from .client import Candidates, RendezvousClient  # noqa: F401
from .endpoints import MAX_HINT_ENDPOINTS, MAX_LOCAL_ENDPOINTS, usable_endpoint  # noqa: F401
from .server import Registration, RendezvousServer  # noqa: F401
