"""The node's answers in Wings' shapes, and its bearer check, on every route it serves: its
own (wingsbak.http) and Wings' (wingsbak.wings). The panel reads Wings' error body and its
User-Agent; the bearer is the node token, checked as Wings checks it."""

from __future__ import annotations

import hmac

from aiohttp import web

from wingsbak import __version__
from wingsbak.errors import Forbidden, Unauthorized


def node_user_agent(token_id: str) -> str:
    """Pelican Wings' ``User-Agent`` answer header (router/middleware/middleware.go). Pelican
    (``DaemonRepository::enforceValidNodeToken``) treats an answer without it as a failed
    connection, and reads the token id from it to catch a node set up with another's token."""
    return f"Pelican Wings/v{__version__} (id:{token_id})"


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def check_bearer(request: web.Request, token: str) -> None:
    """401 without a well-formed bearer header, 403 with the wrong token (constant time)."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Unauthorized("The request needs a bearer token.")
    # surrogateescape: a header with bytes that are not UTF-8 is a wrong token, not a 500.
    presented = credentials.strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(presented, token.encode()):
        raise Forbidden("The bearer token is not valid for this node.")
