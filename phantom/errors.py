"""Domain errors: what went wrong, in the words of the job that refused.

The node's controller, the config and key files, the directory's store and
its server raise these; none of them knows HTTP.  The HTTP front ends answer
them as ``{"error": message}`` with the status :mod:`phantom.http.statuses`
maps each class to; a command-line tool prints the message.
"""

from __future__ import annotations


class PhantomError(Exception):
    """A refusal whose ``message`` is fit to show the user (it never quotes a secret)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Invalid(PhantomError):
    """Malformed or impossible input: a bad endpoint, name, key, body or rule."""


class Unauthorized(PhantomError):
    """No credential, or a wrong one."""


class Forbidden(PhantomError):
    """A credential or signature that does not allow this."""


class NotFound(PhantomError):
    """No such peer, record or thing."""


class Conflict(PhantomError):
    """It contradicts the state: a key or name or prefix another holds, a stale sequence."""


class Gone(PhantomError):
    """It existed and never will again (a revoked key)."""


class TooLarge(PhantomError):
    """Input over a size limit."""


class RateLimited(PhantomError):
    """Over a rate or quota; ``retry_after``: seconds until it is worth trying again."""

    def __init__(self, message: str, retry_after: float = 60.0):
        super().__init__(message)
        self.retry_after = max(1.0, float(retry_after))


class Unsupported(PhantomError):
    """This part cannot do that (e.g. names or listings on the DHT)."""


class Unavailable(PhantomError):
    """Something the request needs (the key directory, a database) cannot be reached."""


class Timeout(PhantomError):
    """It did not finish in the time allowed."""


class HandshakeTimeout(Timeout):
    """The peer did not answer within the bounded handshake retries."""


class HandshakeRefused(Forbidden):
    """The peer answered our handshake with an authenticated refusal
    ("removed by the network", "certificate expired", ...)."""


class ConfigError(Exception):
    """Bad configuration.  ``key`` names the offending setting."""

    def __init__(self, key: str, problem: str):
        super().__init__("%s: %s" % (key, problem))
        self.key = key
        self.problem = problem
