"""The pass-through to Wings (only with ``api.upstream``): every route wingsbak does not own
goes to Wings unchanged, bodies streamed both ways and never held whole; the one exception is
a power action that would start a server while a restore writes into it
(:mod:`wingsbak.wings.hold`).

Hop-by-hop headers (RFC 9110 7.6.1, and those the ``Connection`` header names) stop here;
``X-Forwarded-For``/``-Proto``/``-Host`` are added so that Wings, trusting this address
(``api.trusted_proxies``), logs the user's address. The client's ``Host`` goes through as is.

``Expect: 100-continue`` is Wings' to answer: Go's server sends the ``100 Continue`` when the
handler first reads the body, so a request Wings refuses unread (a bad token, an unknown
server) gets its refusal and never a 100. The client's 100 leaves here when Wings' arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from wingsbak.addresses import client_address
from wingsbak.answers import error_response
from wingsbak.errors import RequestTimeout
from wingsbak.log import get_logger
from wingsbak.wings.client import WINGS
from wingsbak.wings.identity import IDENTITY

log = get_logger(__name__)

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
    )
)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Set on a request whose ``100 Continue`` is still owed to the client (by Wings, or by a
# handler of wingsbak's that reads the body once it has judged the request).
CONTINUE_OWED = web.RequestKey("continue_owed", bool)
UNREACHABLE = "The node's Wings daemon could not be reached."
# Bytes a body may gather between the two sockets, each way: aiohttp's 64 KiB default makes
# every hop a round of wake-ups between three processes, which on a busy node halves the
# throughput; a few MiB per transfer keeps memory flat all the same.
BUFFER = 1024 * 1024
# Skipped unless the client sent them: the request must reach Wings as the client made it.
_NO_AUTO_HEADERS = (hdrs.CONTENT_TYPE, hdrs.ACCEPT, hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING)


class WingsAnswer(web.StreamResponse):
    """Wings' answer, streamed back to the client (Wings unreachable: wingsbak's own 502)."""

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
    # An IPv4 client of a dual-stack listener is ::ffff:a.b.c.d to it; Go's listener under
    # Wings gives a.b.c.d, and so does this header.
    client = (client_address((request.remote,)) or "") if request.remote else ""
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
    identity = request.app[IDENTITY]
    data: Any = body if body is not None else (request.content if request.body_exists else None)
    continued = _ExpectedContinue(request) if data is request.content else None
    owed = continued is not None and continued.owed
    if owed:
        assert continued is not None
        data = continued.body()
    for attempt in (1, 2):
        # Credentials as Wings takes them while it still holds an earlier node token.
        url = URL(wings.url(identity.path_for_wings(target(request))), encoded=True)
        headers = forwarded_headers(request)
        if not owed:
            headers.popall(hdrs.EXPECT, None)  # answered here already, or nothing to wait for
        credentials_rewritten = identity.headers_for_wings(headers)
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
            _client_failed(request, request.content if continued is not None else data)
            log.warning(
                "wings_unreachable", method=request.method, path=request.path, error=repr(exc)
            )
            failed = error_response(502, UNREACHABLE)
            if continued is not None and continued.owed:
                failed.force_close()  # the client still holds its body back
            return failed
        # A 403 to the token Wings was believed to hold: Wings restarted with the node's new
        # one. Asked again when no body was consumed.
        replayable = data is None or isinstance(data, bytes)
        if not (credentials_rewritten and upstream.status == 403 and attempt == 1 and replayable):
            break
        if not await identity.wings_refused():
            break
        upstream.release()
    async with upstream:
        wings.note_answer(request.method, request.path, upstream.headers)
        response = WingsAnswer(status=upstream.status, reason=upstream.reason)
        response.headers.extend(end_to_end(upstream.headers))
        if continued is not None and continued.owed:
            # Wings answered without reading the body, which the client still holds back:
            # Go closes such a connection after its answer (net/http, closeAfterReply).
            response.force_close()
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


class _ExpectedContinue:
    """A request body that waits for ``Expect: 100-continue``: the client's ``100 Continue``
    is sent when the body is first asked for, which Wings' own 100 is what lets happen (the
    client library sends a body only after the 100)."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        expect = request.headers.get(hdrs.EXPECT, "").strip().lower()
        # Go sends no 100 to an HTTP/1.0 client; aiohttp's default handler has sent it already
        # on a route that is not Wings' alone.
        self.owed = (
            request.get(CONTINUE_OWED, False)
            and expect == "100-continue"
            and request.version >= aiohttp.HttpVersion11
        )

    async def body(self) -> AsyncIterator[bytes]:
        await send_continue(self.request)
        self.owed = False
        async for chunk in self.request.content.iter_any():
            yield chunk


async def send_continue(request: web.Request) -> None:
    """Send the ``100 Continue`` the client waits for, if it is still owed."""
    if not request.get(CONTINUE_OWED, False):
        return
    request[CONTINUE_OWED] = False
    await request.writer.write(CONTINUE)
    request.writer.output_size = 0  # the answer's own bytes are counted from here
    protocol = request.protocol
    if isinstance(protocol, ContinueAware):
        protocol.continue_sent()


async def owe_continue(request: web.Request) -> None:
    """The expect handler of Wings' routes: no ``100 Continue`` before the body is asked for
    (an unknown expectation is Wings' to refuse too)."""
    if request.headers.get(hdrs.EXPECT, "").strip().lower() == "100-continue":
        request[CONTINUE_OWED] = True
        protocol = request.protocol
        if isinstance(protocol, ContinueAware):
            protocol.continue_owed()


@runtime_checkable
class ContinueAware(Protocol):
    """A connection whose body deadline does not run while the client waits for a 100."""

    def continue_owed(self) -> None: ...

    def continue_sent(self) -> None: ...


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


def add_routes(app: web.Application) -> None:
    """Everything else to Wings, after wingsbak's own routes and Wings' that wingsbak joins
    in (a path wingsbak owns for other methods falls through to this catch-all, so e.g. Wings
    answers a GET on a backup path)."""
    app.router.add_route(
        "*", "/{tail:.*}", pass_through, name="wings", expect_handler=owe_continue
    )
