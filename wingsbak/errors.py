"""Errors a client can act on, each with its HTTP status. The HTTP layer maps them in one place
(``wingsbak.http.middleware``); the message is one human sentence and never holds a node path."""

from __future__ import annotations


class ApiError(Exception):
    status = 500
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class TokenRejected(ApiError):
    """A download or websocket token that is invalid, expired or already used."""

    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class RequestTimeout(ApiError):
    """A request body that stopped arriving (``api.body_timeout``)."""

    status = 408


class Conflict(ApiError):
    status = 409


class PreconditionFailed(ApiError):
    status = 412


class PayloadTooLarge(ApiError):
    status = 413


class RangeNotSatisfiable(ApiError):
    """A ``Range`` that starts past the end: says how long the file is, as RFC 9110 asks."""

    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.headers = {"Content-Range": f"bytes */{size}"}


class BadGateway(ApiError):
    """Something the request needs from elsewhere (a restore's download link) is unreachable."""

    status = 502


class Unavailable(ApiError):
    status = 503


class ServiceFailure(Exception):
    """A service the node relies on (a store, the panel, Wings) failed; the message says it
    all, so a job that ends on one logs a line without a traceback."""


def describe(exc: BaseException, *, one_line: bool = False) -> str:
    """What went wrong, as a person reads it: an OS error's own words (without its path),
    else the message, else the exception's name; ``one_line``: its first line only."""
    strerror = getattr(exc, "strerror", None)
    text = strerror if isinstance(strerror, str) and strerror else str(exc)
    text = text or type(exc).__name__
    return text.splitlines()[0] if one_line else text
