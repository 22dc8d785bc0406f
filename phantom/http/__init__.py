"""HTTP for phantom's JSON services (phantomd's API, the key directory): the
hardened server (server.py), the token and Host guard (guard.py), domain
errors as statuses (statuses.py), an app assembled from route parts (app.py)
and their OpenAPI description (openapi.py)."""
