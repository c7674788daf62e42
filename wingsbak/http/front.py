"""The pass-through to Wings (only with ``api.upstream``): every route wingsbak does not own
goes to Wings unchanged, bodies streamed both ways and never held whole; the one exception is
a power action that would start a server while a restore writes into it (409). While a restore
runs, a power request for its server reaches Wings as wingsbak read it with Wings' own rules
(:mod:`wingsbak.gojson`), or not at all.

Hop-by-hop headers (RFC 9110 7.6.1, and those the ``Connection`` header names) stop here;
``X-Forwarded-For``/``-Proto``/``-Host`` are added so that Wings, trusting this address
(``api.trusted_proxies``), logs the user's address. The client's ``Host`` goes through as is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from wingsbak import gojson
from wingsbak.errors import RequestTimeout
from wingsbak.http.middleware import check_bearer, error_response
from wingsbak.http.state import CONFIG, JOBS, WINGS
from wingsbak.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
        hdrs.TE,
        hdrs.TRAILER,
        "Trailers",
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        # Answered by this server already (aiohttp sends the 100 Continue itself).
        hdrs.EXPECT,
    )
)
# Power actions that run a server: held while a restore writes into its files.
HELD_ACTIONS = frozenset({"start", "restart", "kill"})
UNREACHABLE = "The node's Wings daemon could not be reached."
HELD = "The server is being restored from a backup; it cannot be started until the restore ends."
# Bytes a body may gather between the two sockets, each way: aiohttp's 64 KiB default makes
# every hop a round of wake-ups between three processes, which on a busy node halves the
# throughput; a few MiB per transfer keeps memory flat all the same.
BUFFER = 1024 * 1024
# Skipped unless the client sent them: the request must reach Wings as the client made it.
_NO_AUTO_HEADERS = (hdrs.CONTENT_TYPE, hdrs.ACCEPT, hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING)
# Larger bodies and frames are read off the event loop: one of many small values takes Python
# about a second per 2 MB.
INLINE_DECODE_BYTES = 16 * 1024


class _PassedResponse(web.StreamResponse):
    # Status line and headers leave with the first bytes of the body (as web.Response's do)
    # rather than at prepare(): one send and one wake-up of the client less per answer.
    _send_headers_immediately = False


def end_to_end(headers: CIMultiDict[str] | hdrs.CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """``headers`` without the hop-by-hop ones, including those ``Connection`` names."""
    named = {
        token.strip().lower()
        for value in headers.getall(hdrs.CONNECTION, ())
        for token in value.split(",")
    }
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named
    )


def forwarded_headers(request: web.Request) -> CIMultiDict[str]:
    headers = end_to_end(request.headers)
    client = request.remote or ""
    previous = ", ".join(request.headers.getall(hdrs.X_FORWARDED_FOR, ()))
    headers.popall(hdrs.X_FORWARDED_FOR, None)
    headers[hdrs.X_FORWARDED_FOR] = f"{previous}, {client}" if previous else client
    headers[hdrs.X_FORWARDED_PROTO] = request.scheme
    if hdrs.HOST in request.headers:
        headers[hdrs.X_FORWARDED_HOST] = request.headers[hdrs.HOST]
    return headers


def target(request: web.Request) -> str:
    """The path and query string to ask Wings for, as the client wrote them. Of an
    absolute-form target (``GET http://host/path``) only these: aiohttp routes on its path,
    and Wings must get the request wingsbak routed (``raw_path`` is the whole target)."""
    path_qs = request.rel_url.raw_path_qs
    return path_qs if path_qs.startswith("/") else "/" + path_qs


async def forward(
    request: web.Request, body: bytes | None = None, *, rewritten: bool = False
) -> web.StreamResponse:
    """Send ``request`` to Wings and stream its answer back. ``body``: the request body, when
    a handler has read it already (``rewritten``: JSON that wingsbak wrote in place of the
    client's); otherwise it streams from the client as it arrives."""
    wings = request.app[WINGS]
    url = URL(wings.url(target(request)), encoded=True)
    data = body if body is not None else (request.content if request.body_exists else None)
    headers = forwarded_headers(request)
    if rewritten:
        for name in (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING, hdrs.CONTENT_TYPE):
            headers.popall(name, None)
        headers[hdrs.CONTENT_TYPE] = "application/json"
    try:
        upstream = await wings.session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
    except (aiohttp.ClientError, TimeoutError, RequestTimeout) as exc:
        _client_failed(request, data)
        log.warning("wings_unreachable", method=request.method, path=request.path, error=repr(exc))
        return error_response(502, UNREACHABLE)
    async with upstream:
        wings.note_answer(request.method, request.path, upstream.headers)
        response = _PassedResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(end_to_end(upstream.headers))
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status line is gone already: only dropping the connection tells the client
            # the body is incomplete.
            log.warning(
                "wings_answer_cut", method=request.method, path=request.path, error=repr(exc)
            )
            raise ConnectionResetError("Wings' answer was cut off") from None
        await response.write_eof()
    return response


def _client_failed(request: web.Request, data: object) -> None:
    """Raise what ended the client's own body, when that is why the request to Wings failed:
    a stall (``api.body_timeout``, logged by the server) is the client's 408, a client gone
    away has no answer; neither says anything of Wings."""
    if data is not request.content:
        return
    failed = request.content.exception()
    if isinstance(failed, RequestTimeout):
        raise failed
    if failed is not None:
        log.info("request_body_cut", method=request.method, path=request.path, error=repr(failed))
        raise ConnectionResetError("the client's request body was cut off") from None


async def pass_through(request: web.Request) -> web.StreamResponse:
    return await forward(request)


async def power(request: web.Request) -> web.StreamResponse:
    """``POST /api/servers/{server}/power``: Wings' route, except while the server is being
    restored (Wings suspends a server during its own restores for the same reason): the body
    is read as Wings' gin ``BindJSON`` reads it, an action that would start the server answers
    409, and anything else goes to Wings as read here, so that what Wings acts on is what was
    judged. A body Wings' decoder fails on is held too. A request without the node token is
    Wings' to refuse."""
    body = await request.read()  # a few bytes of JSON (client_max_size bounds it)
    server = request.match_info["server"]
    if server not in request.app[JOBS].restores:
        return await forward(request, body)
    try:
        check_bearer(request, request.app[CONFIG].token)
    except Exception:
        return await forward(request, body)
    try:
        wanted = await decoded(gojson.power_request, body)
    except gojson.GoJSONError:
        log.info("power_held", server=server, action=None, reason="body not readable by Wings")
        return error_response(409, HELD)
    if wanted.action in HELD_ACTIONS:
        log.info("power_held", server=server, action=wanted.action)
        return error_response(409, HELD)
    return await forward(request, wanted.encode(), rewritten=True)


async def decoded(read: Callable[[bytes], T], data: bytes) -> T:
    """``read(data)``, off the event loop when ``data`` is large."""
    if len(data) <= INLINE_DECODE_BYTES:
        return read(data)
    return await asyncio.to_thread(read, data)


def add_routes(app: web.Application) -> None:
    """Wings' routes, after wingsbak's own (a path wingsbak owns for other methods falls
    through to the catch-all, so e.g. Wings answers a GET on a backup path)."""
    app.router.add_post("/api/servers/{server}/power", power, name="wings-power")
    app.router.add_route("*", "/{tail:.*}", pass_through, name="wings")
