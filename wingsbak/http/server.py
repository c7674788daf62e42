"""The HTTP server under the application: aiohttp's connection protocol with the deadlines and
the cap a node on the open internet needs, on a listener of its own.

aiohttp closes an idle keep-alive connection, but sets no deadline on a request's header or
body and no cap per client: connections holding an unfinished header, or a body trickled a byte
at a time, keep their descriptors until the node has none left for the panel. Each connection
here (:class:`GuardedConnection`) has at most one timer of its own, and nothing polls:

- ``api.header_timeout``: from the accept (after a TLS handshake, which gets as long again), or
  on a keep-alive connection from the first byte of the next request, to the end of its header.
  Then 408 (nothing, when not a byte came) and the connection closes.
- ``api.body_timeout``: a deadline on progress, not on total time. It fires when no byte of the
  body came for that long while the node was ready to read it (a handler that is not reading
  pauses the socket, and a paused socket is no silence of the client's); the handler's read
  then fails with a 408 and the connection closes after the answer.
- ``api.max_connections_per_address``: a connection counts against its address from its accept
  (before its TLS handshake) until its request head is complete, and again from the first byte
  of each later request on it; an answered request, an idle keep-alive connection, an upgraded
  websocket and a body being received are not counted, so open consoles and transfers are never
  refused for their number. A connection that arrives while its address already has that many
  heads outstanding gets :data:`OVER_CAP_GRACE_SECONDS` for its handshake and head (a burst of
  ordinary clients behind one proxy makes it in time), else a 429 and the close. Addresses in
  ``api.trusted_proxies`` are not counted.
- ``api.keepalive_timeout``: aiohttp's own idle deadline between two requests.

asyncio's own server runs a TLS handshake (up to 60 s) before the protocol learns of the
connection, so :class:`Listener` accepts itself and hands each socket to
``loop.connect_accepted_socket`` once it is counted. A wildcard host (``0.0.0.0``, ``::``) listens
on both IP families, as Go's listener under Wings does.

aiohttp's parser refusals (a bad request line or header, an oversized header) are answered
here, as JSON like every other error, echoing nothing of the request: aiohttp's own text quotes
the request line back, a download token included.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
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

from wingsbak.addresses import WILDCARD_HOSTS, client_address
from wingsbak.answers import error_response
from wingsbak.config import ApiConfig
from wingsbak.errors import RequestTimeout
from wingsbak.log import get_logger

log = get_logger(__name__)

# How long a refused connection reads (and drops) what its client still sends after the 429:
# closing at once with unread bytes would reset the connection and lose the answer.
REFUSED_LINGER_SECONDS = 2.0
# How long a connection that arrived over its address's cap has for its TLS handshake and
# request head: ordinary clients behind one proxy, arriving in a burst, finish in far less; a
# slow one costs a descriptor no longer than a refusal's linger.
OVER_CAP_GRACE_SECONDS = 2.0
# The pause after an accept failed for want of descriptors or memory (asyncio's own delay).
ACCEPT_RETRY_SECONDS = 1.0
# Connections taken from the backlog per wake-up, so that one busy port shares the loop.
ACCEPT_BATCH = 64


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
    """Connections per client address that await a request head, against a cap (0: none);
    addresses of trusted proxies are never counted."""

    def __init__(self, cap: int, trusted: Iterable[str] = ()) -> None:
        self.cap = cap
        self._trusted = [ipaddress.ip_network(entry, strict=False) for entry in trusted]
        self._open: dict[str, int] = {}

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def open(self, address: str) -> bool:
        """Count one more connection from ``address``; False when it had ``cap`` already."""
        count = self._open.get(address, 0)
        self._open[address] = count + 1
        return not self.cap or count < self.cap

    def close(self, address: str) -> None:
        count = self._open.pop(address) - 1
        if count:
            self._open[address] = count


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
        self._address: str | None = None  # the client's, for the cap and the log
        self._accepted_at: float | None = None
        self._exempt = True  # never counted: a trusted proxy, or no address
        self._counted = False  # awaiting a request head, counted against the cap
        self._over_cap = False  # arrived over the cap: the head is due within the grace
        self._deadline: asyncio.TimerHandle | None = None
        self._closing = False  # refused or stalled: what the client still sends is dropped
        self._between_requests = True  # the next byte starts a request's header
        self._header_begun = False
        self._body: StreamReader | None = None  # a body being received
        self._body_progress = 0.0  # when a byte of it last came (or the node last stopped)
        self._awaiting_continue = False  # the client holds its body back until a 100

    # -- the connection --------------------------------------------------------------------

    def accepted(self, peer: Any) -> bool:
        """The TCP accept, before any TLS handshake: from here the connection counts against
        its address. False: it arrived over the cap (and has the grace)."""
        self._accepted_at = self._loop.time()
        self._address = client_address(peer)
        self._exempt = self._address is None or self._addresses.trusted(self._address)
        self._count()
        return not self._over_cap

    @property
    def over_cap(self) -> bool:
        return self._over_cap

    def abandoned(self) -> None:
        """The connection ended before ``connection_made`` (its TLS handshake failed)."""
        self._uncount()

    def _count(self) -> None:
        if self._exempt or self._counted:
            return
        assert self._address is not None
        self._counted = True
        self._over_cap = not self._addresses.open(self._address)

    def _uncount(self) -> None:
        self._over_cap = False
        if self._counted:
            assert self._address is not None
            self._counted = False
            self._addresses.close(self._address)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._accepted_at is None:  # not through Listener: the accept is now
            self.accepted(transport.get_extra_info("peername"))
        assert self._accepted_at is not None
        self._arm_head(self._accepted_at)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._body = None
        self._uncount()
        super().connection_lost(exc)

    def _refuse(self) -> None:
        transport = self.transport
        assert isinstance(transport, asyncio.WriteTransport)
        cap = self._addresses.cap
        log.info("connection_refused", client=self._address, reason="too_many_connections", cap=cap)
        self._closing = True
        transport.write(
            raw_error_answer(
                429,
                f"Too many connections from this address are still sending a request: at most "
                f"{cap} at once.",
                {"Retry-After": "1"},
            )
        )
        if transport.can_write_eof():
            transport.write_eof()  # the client's EOF then closes it (eof_received)
        self._arm(REFUSED_LINGER_SECONDS, self.force_close)

    # -- bytes in --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if data and self._between_requests and not self._header_begun:
            self._header_begun = True
            if self._deadline is None:  # keep-alive: the header's clock and count start now
                self._count()
                self._arm_head(self._loop.time())
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:  # a header is complete
            self._between_requests = False
            self._uncount()
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
            self._awaiting_continue = False
            self._disarm()
        return result

    def continue_owed(self) -> None:
        """The client waits for a ``100 Continue`` before it sends the body
        (wingsbak.wings.proxy.ContinueAware): its silence meanwhile is no stall."""
        self._awaiting_continue = True

    def continue_sent(self) -> None:
        self._awaiting_continue = False
        self._body_progress = self._loop.time()

    # -- deadlines -------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self._loop.call_later(seconds, callback)

    def _arm_head(self, start: float) -> None:
        """The deadline of a request head: ``header_timeout`` from now, and within the grace
        from ``start`` when the connection came over the cap."""
        due = self._loop.time() + self._api.header_timeout
        if self._over_cap:
            due = min(due, start + OVER_CAP_GRACE_SECONDS)
        self._disarm()
        self._deadline = self._loop.call_at(due, self._header_expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_expired(self) -> None:
        self._deadline = None
        if not self._between_requests or self.transport is None:
            return
        if self._over_cap:
            self._refuse()
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
        if self._reading_paused or self._buffer_paused or self._awaiting_continue:
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


# -- the listener ------------------------------------------------------------------------------


def _wildcard_socket(port: int, backlog: int) -> socket.socket:
    """One IPv6 socket that takes IPv4 too (IPV6_V6ONLY off), as Go listens on 0.0.0.0; IPv4
    alone where the host has no IPv6."""
    if socket.has_dualstack_ipv6():
        try:
            return socket.create_server(
                ("::", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
            )
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            log.info("listening_on_ipv4_only", error=exc.strerror)
    return socket.create_server(("0.0.0.0", port), family=socket.AF_INET, backlog=backlog)


async def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host:port``: one dual-stack socket for a
    wildcard host, else one per address the host resolves to."""
    if host in WILDCARD_HOSTS:
        sockets = [_wildcard_socket(port, backlog)]
    else:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets = []
        try:
            for family, _type, _proto, _name, address in dict.fromkeys(infos):
                sockets.append(socket.create_server(address, family=family, backlog=backlog))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
    for sock in sockets:
        sock.setblocking(False)
    return sockets


class Listener(asyncio.AbstractServer):
    """Accepts on its sockets and hands each connection to ``serve``, which counts it before a
    TLS handshake (asyncio's own server would run the handshake first).

    Accepting is a reader callback, not a task awaiting ``sock_accept``: a connection the
    kernel handed over is never lost to a cancellation, and :meth:`close` stops accepting
    and closes the sockets before it returns, so the port is free for a new listener at once
    (a moved listener, see wingsbak.wings.identity)."""

    def __init__(
        self,
        sockets: list[socket.socket],
        serve: Callable[[socket.socket, Any], Awaitable[None]],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._serve = serve
        self._connections: set[asyncio.Task[None]] = set()
        self._closed = self._loop.create_future()
        self._retries: dict[socket.socket, asyncio.TimerHandle] = {}
        for sock in sockets:
            self._loop.add_reader(sock, self._accept, sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return bool(self._sockets)

    def close(self) -> None:
        """Stop accepting and close the sockets; connections still in their TLS handshake are
        dropped (the others are aiohttp's to close)."""
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            self._loop.remove_reader(sock)
            retry = self._retries.pop(sock, None)
            if retry is not None:
                retry.cancel()
            sock.close()
        for task in self._connections:
            task.cancel()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def start_serving(self) -> None:
        pass

    async def serve_forever(self) -> None:
        await self._closed

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # ECONNABORTED: the client left before its accept
            except OSError as exc:
                # Out of descriptors or memory (or worse): the pending connections wait
                # in the backlog meanwhile; the listener never stops for good.
                log.error("accept_failed", error=exc.strerror, retry=ACCEPT_RETRY_SECONDS)
                self._loop.remove_reader(sock)
                self._retries[sock] = self._loop.call_later(
                    ACCEPT_RETRY_SECONDS, self._resume, sock
                )
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._serve(conn, peer))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    def _resume(self, sock: socket.socket) -> None:
        self._retries.pop(sock, None)
        if sock in self._sockets:
            self._loop.add_reader(sock, self._accept, sock)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are :class:`GuardedConnection`, accepted by a
    :class:`Listener`: the protocol is made here, not by ``web.Server`` (which would make a
    plain ``RequestHandler``)."""

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
        self._addresses = AddressCounter(api.max_connections_per_address, api.trusted_proxies)

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    def use_ssl_context(self, ssl_context: ssl.SSLContext | None) -> None:
        """Connections accepted from now on handshake with ``ssl_context`` (a renewed
        certificate); open ones keep the one they have."""
        self._ssl_context = ssl_context

    async def start(self) -> None:
        await super().start()
        sockets = await listening_sockets(self._host, self._port, self._backlog)
        self._server = Listener(sockets, self._serve)

    async def _serve(self, conn: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        protocol = GuardedConnection(server, loop=loop, api=self._api, addresses=self._addresses)
        within_cap = protocol.accepted(peer)
        tls = self._ssl_context
        handshake = self._api.header_timeout if within_cap else OVER_CAP_GRACE_SECONDS
        try:
            await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=tls, ssl_handshake_timeout=handshake if tls else None
            )
        except asyncio.CancelledError:
            protocol.abandoned()
            conn.close()
            raise
        except Exception as exc:  # the handshake failed or ran out, or the client left
            client, cap = client_address(peer), self._addresses.cap
            # asyncio ends a handshake that runs out with ConnectionAbortedError.
            if protocol.over_cap and isinstance(exc, ConnectionAbortedError):
                reason = "too_many_connections"
                log.info("connection_refused", client=client, reason=reason, cap=cap)
            else:
                log.debug("tls_handshake_failed", client=client, error=type(exc).__name__)
            protocol.abandoned()
            conn.close()


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
