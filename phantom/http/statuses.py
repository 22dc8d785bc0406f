"""The HTTP status of each domain error (:mod:`phantom.errors`), in one place.

A class maps to the status of its nearest listed ancestor; a PhantomError
that none covers is a 500, like any other exception.
"""

from __future__ import annotations

from .. import errors


class RequestTimeout(errors.Timeout):
    """The HTTP layer's own: the request's body did not arrive in time."""


STATUSES: dict = {
    errors.Invalid: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    RequestTimeout: 408,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.TooLarge: 413,
    errors.RateLimited: 429,
    errors.Unsupported: 501,
    errors.Unavailable: 503,
    errors.Timeout: 504,
}


def status_of(exc: BaseException) -> int:
    """The status ``exc`` is answered with (500 for anything unlisted)."""
    for cls in type(exc).__mro__:
        status = STATUSES.get(cls)
        if status is not None:
            return status
    return 500
