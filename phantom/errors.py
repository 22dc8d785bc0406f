"""Errors the control plane reports to API clients, each with an HTTP status."""

from __future__ import annotations


class ApiError(Exception):
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class ServiceUnavailable(ApiError):
    """Something the request needs (the key directory) cannot be reached."""

    status = 503


class HandshakeTimeout(ApiError):
    """The peer did not answer within the bounded retries."""

    status = 504


class ConfigError(Exception):
    """Bad configuration.  ``key`` names the offending setting."""

    def __init__(self, key: str, problem: str):
        super().__init__("%s: %s" % (key, problem))
        self.key = key
        self.problem = problem
