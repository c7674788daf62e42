"""The HTTP server under the application: aiohttp's connection protocol with the deadlines and
the cap a node on the open internet needs.

aiohttp closes an idle keep-alive connection, but sets no deadline on a request's header or
body and no cap per client: connections holding an unfinished header, or a body trickled a byte
at a time, keep their descriptors until the node has none left for the panel. Each connection
here (:class:`GuardedConnection`) has at most one timer of its own, and nothing polls:

- ``api.header_timeout``: from the accept, or on a keep-alive connection from the first byte of
  the next request, to the end of its header. Then 408 (nothing, when not a byte came) and the
  connection closes.
- ``api.body_timeout``: a deadline on progress, not on total time. It fires when no byte of the
  body came for that long while the node was ready to read it (a handler that is not reading
  pauses the socket, and a paused socket is no silence of the client's); the handler's read
  then fails with a 408 and the connection closes after the answer.
- ``api.max_connections_per_address``: the connection over the cap is answered 429 at once and
  closed.
- ``api.keepalive_timeout``: aiohttp's own idle deadline between two requests.

aiohttp's parser refusals (a bad request line or header, an oversized header) are answered
here, as JSON like every other error, echoing nothing of the request: aiohttp's own text quotes
the request line back, a download token included.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.streams import StreamReader

from wingsbak.config import ApiConfig
from wingsbak.errors import RequestTimeout
from wingsbak.http.middleware import error_response
from wingsbak.log import get_logger

log = get_logger(__name__)

# How long a refused connection reads (and drops) what its client still sends after the 429:
# closing at once with unread bytes would reset the connection and lose the answer.
REFUSED_LINGER_SECONDS = 2.0


def raw_error_answer(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete ``Connection: close`` JSON error answer, for a connection that has no request
    to answer through aiohttp (no header yet, or refused at the accept)."""
    body = json.dumps({"error": message}).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return "\r\n".join(head).encode("ascii") + b"\r\n\r\n" + body


class AddressCounter:
    """Connections open per client address, against a cap (0: none)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and not counted) over the cap."""
        count = self._open.get(address, 0)
        if self.cap and count >= self.cap:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.pop(address) - 1
        if count:
            self._open[address] = count


def client_address(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return None  # a Unix socket: no address to count
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return str(peer[0])
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: one client, one count.
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def parser_refusal(exc: HttpProcessingError) -> tuple[int, str]:
    """The status and sentence for a request aiohttp's parser refused. Never the exception's
    own text: it quotes the request."""
    if isinstance(exc, LineTooLong):
        return 431, "The request line or a header field is too long."
    if exc.message == "Too many headers received":
        return 431, "The request has too many header fields."
    if isinstance(exc, BadHttpMethod):
        if exc.message == "Received HTTPS traffic on an HTTP port":
            return 400, "This port speaks plain HTTP, not HTTPS."
        return 400, "The request method is not valid."
    if isinstance(exc, InvalidURLError):
        return 400, "The request target is not valid."
    if isinstance(exc, InvalidHeader):
        return 400, "A header field is not valid."
    if isinstance(exc, BadStatusLine):
        return 400, "The request line is malformed."
    return 400, "The request is not valid HTTP."


class GuardedConnection(web.RequestHandler):
    """aiohttp's connection protocol with the header and body deadlines and the address cap."""

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        api: ApiConfig,
        addresses: AddressCounter,
    ) -> None:
        # The application's handler_args (web.Server keeps them in _kwargs and hands them to
        # every RequestHandler it makes), e.g. the larger read buffer in front of Wings.
        handler_args = {**getattr(manager, "_kwargs", {})}
        handler_args.update(access_log=None, keepalive_timeout=api.keepalive_timeout)
        super().__init__(manager, loop=loop, **handler_args)
        self._api = api
        self._addresses = addresses
        self._address: str | None = None  # counted against the cap until the connection ends
        self._deadline: asyncio.TimerHandle | None = None
        self._closing = False  # refused or stalled: what the client still sends is dropped
        self._between_requests = True  # the next byte starts a request's header
        self._header_begun = False
        self._body: StreamReader | None = None  # a body being received
        self._body_progress = 0.0  # when a byte of it last came (or the node last stopped)

    # -- the connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        address = client_address(transport)
        if address is not None and not self._addresses.admit(address):
            self._refuse(transport, address)
            return
        self._address = address
        self._arm(self._api.header_timeout, self._header_expired)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._body = None
        if self._address is not None:
            self._addresses.release(self._address)
            self._address = None
        super().connection_lost(exc)

    def _refuse(self, transport: asyncio.BaseTransport, address: str) -> None:
        cap = self._addresses.cap
        log.info("connection_refused", client=address, reason="too_many_connections", cap=cap)
        self._closing = True
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(
            raw_error_answer(
                429,
                f"Too many connections from this address: at most {cap} at once.",
                {"Retry-After": "1"},
            )
        )
        if transport.can_write_eof():
            transport.write_eof()  # the client's EOF then closes it (eof_received)
        self._deadline = self._loop.call_later(REFUSED_LINGER_SECONDS, self.force_close)

    # -- bytes in --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if data and self._between_requests and not self._header_begun:
            self._header_begun = True
            if self._deadline is None:  # keep-alive: the header's clock starts now
                self._arm(self._api.header_timeout, self._header_expired)
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:  # a header is complete
            self._between_requests = False
            self._disarm()
            payload = self._messages[-1][1]
            self._body = None if payload.is_eof() or self._upgraded else payload
            if self._body is not None:
                self._body_progress = self._loop.time()
                self._arm(self._api.body_timeout, self._check_body)
        elif self._body is not None and data:
            self._body_progress = self._loop.time()
        if self._body is not None and self._body.is_eof():
            self._body = None
            self._disarm()

    def resume_reading(self, resume_parser: bool = True) -> None:
        # The node stopped reading (its buffer was full): the client was not silent meanwhile.
        self._body_progress = self._loop.time()
        super().resume_reading(resume_parser)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if not self._messages:
            # Answered: a body still arriving is aiohttp's to drain (its lingering time) or
            # drop, and the next byte is the next request's.
            self._between_requests = True
            self._header_begun = False
            self._body = None
            self._disarm()
        return result

    # -- deadlines -------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self._loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_expired(self) -> None:
        self._deadline = None
        if not self._between_requests or self.transport is None:
            return
        seconds = self._api.header_timeout
        if self._header_begun:
            log.info("request_header_timeout", client=self._address, seconds=seconds)
            self.transport.write(
                raw_error_answer(408, f"The request header did not arrive within {seconds:g} s.")
            )
        self.force_close()  # the transport sends what it holds, then closes

    def _check_body(self) -> None:
        self._deadline = None
        body = self._body
        if body is None or body.is_eof() or self._upgraded:
            self._body = None
            return
        now = self._loop.time()
        if self._reading_paused or self._buffer_paused:
            self._body_progress = now  # the node is not reading: no silence of the client's
        due = self._body_progress + self._api.body_timeout
        if now < due:  # bytes came meanwhile: look again when this silence would end
            self._deadline = self._loop.call_at(due, self._check_body)
            return
        seconds = self._api.body_timeout
        log.info("request_body_timeout", client=self._address, seconds=seconds)
        self._closing = True
        self._body = None
        # The handler's read fails with a 408; at EOF aiohttp does not linger on what is left,
        # and close() ends the connection after the answer (the rest of the body would be
        # read as a request).
        body.set_exception(RequestTimeout(f"The request body stalled: no data for {seconds:g} s."))
        body.feed_eof()
        self.close()

    # -- refusals of aiohttp's parser ------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer is on the wire: aiohttp drops it
            raise ConnectionError("the answer had begun; no error answer can follow it")
        if isinstance(exc, HttpProcessingError):
            status, text = parser_refusal(exc)
            # Its class only: the exception's text quotes the request, tokens included.
            level = log.debug if isinstance(exc, BadHttpMethod) else log.info
            level("request_refused", client=request.remote, status=status, error=type(exc).__name__)
        elif status == 500:
            log.error("request_failed", error=repr(exc), exc_info=exc)
            text = "An unexpected error occurred on the node."
        else:
            text = HTTPStatus(status).description or "The request failed."
        response = error_response(status, text)
        response.force_close()
        return response


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are :class:`GuardedConnection`: the protocol is made here,
    not by ``web.Server`` (which would make a plain ``RequestHandler``)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        api: ApiConfig,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._api = api
        self._addresses = AddressCounter(api.max_connections_per_address)

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def connection() -> GuardedConnection:
            return GuardedConnection(server, loop=loop, api=self._api, addresses=self._addresses)

        self._server = await loop.create_server(
            connection, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog
        )


async def start_server(
    app: web.Application,
    api: ApiConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 5.0,
) -> web.AppRunner:
    """Run ``app`` behind the guards above on ``host:port`` (by default the configured ones;
    port 0 picks a free one, see ``runner.addresses``); ``runner.cleanup()`` stops it."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = GuardedSite(
        runner,
        api.host if host is None else host,
        api.port if port is None else port,
        api=api,
        ssl_context=ssl_context,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
