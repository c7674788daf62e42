"""Request ids, bearer authentication, and the one place errors become HTTP answers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from wingsbak.answers import check_bearer, error_response, node_user_agent
from wingsbak.errors import ApiError
from wingsbak.log import get_logger
from wingsbak.storage.base import StoreError

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_MESSAGES = {
    400: "The request is malformed.",
    404: "The requested resource does not exist.",
    405: "The method is not allowed for this resource.",
    413: "The request body is too large.",
}


def make_identify(
    token_id: Callable[[], str],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: every answer (errors, downloads and the websocket
    handshake included) carries :func:`node_user_agent`. One that already has a
    ``User-Agent`` (Wings' own, passed through) keeps it."""

    async def identify(_request: web.Request, response: web.StreamResponse) -> None:
        if "User-Agent" not in response.headers:
            response.headers["User-Agent"] = node_user_agent(token_id())

    return identify


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:16]
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except ConnectionError:
        raise  # the client went away: nothing to answer, nothing to report
    except Exception as exc:
        if _answer_begun(request):
            # The handler's own answer is on the wire (an upgraded websocket, a body partly
            # sent): a new one would be written into it. aiohttp drops the connection instead.
            log.exception("request_failed_after_answer", method=request.method, path=request.path)
            raise ConnectionResetError("the request failed after its answer had begun") from None
        if isinstance(exc, web.HTTPException) and exc.status < 400:
            raise  # a redirect: aiohttp sends it
        response = _error_answer(request, exc)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response


def _answer_begun(request: web.Request) -> bool:
    # aiohttp's own test (in web_protocol's handle_error): bytes of an answer were written.
    return request.writer.output_size > 0


def _error_answer(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, web.HTTPException):
        message = _STATUS_MESSAGES.get(exc.status, exc.reason or "The request failed.")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, message, headers)
    if isinstance(exc, StoreError):
        # A store's service failed the request (after its retries): not the client's fault,
        # nor a bug here. What exactly went wrong is for the node's operator, in the log.
        log.error(
            f"{exc.kind}_request_failed",
            method=request.method,
            path=request.path,
            code=exc.code,
            error=str(exc),
        )
        return error_response(502, exc.answer)
    log.exception("request_failed", method=request.method, path=request.path)
    return error_response(500, "An unexpected error occurred on the node.")


def make_auth_middleware(
    token: Callable[[], str],
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """``token`` is asked on every request: the node's token changes while it runs."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            request.path.startswith("/api/")
            and not _is_websocket(request)
            and not _wings_route(request)
        ):
            check_bearer(request, token())
        return await handler(request)

    return auth_middleware


def _wings_route(request: web.Request) -> bool:
    # Routes passed through to Wings (wingsbak.wings): Wings authenticates them and its
    # own answers, 401 and 403 included, go back unchanged.
    name = request.match_info.route.name
    return name is not None and name.startswith("wings")


def _is_websocket(request: web.Request) -> bool:
    # The websocket authenticates inside the socket with a panel-signed JWT, as Wings does.
    return request.path.endswith("/ws") and request.method == "GET"
