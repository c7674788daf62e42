"""Archive downloads at the speed of the kernel.

aiohttp's ``FileResponse`` uses sendfile(2) through the event loop. Measured on this project's
benchmark (bench/api.py, 1 GB over loopback), that reaches about 0.65x of nginx; what closes
the gap is what nginx does: ``TCP_CORK`` while the body goes out (full segments only) and
sendfile calls that are not interleaved with event-loop work. So the body is pumped from a
small dedicated thread pool (poll + sendfile on the connection's socket, the connection's
reading paused meanwhile); when all pump threads are busy, or on TLS, the event loop's
``sendfile`` serves it, as in ``FileResponse``.

The archive is served from a file the caller has already opened (a DELETE that races the
download cannot take it away in between), and :func:`reply_for` decides the answer
(conditional requests, one byte range) before anything is sent, so the caller knows whether
the archive will go out at all: a one-time link is spent only by an answer that sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

from aiohttp import ETag, hdrs, web
from aiohttp.abc import AbstractStreamWriter

PUMP_THREADS = 8
STALL_TIMEOUT_MS = 60_000

_pool = ThreadPoolExecutor(max_workers=PUMP_THREADS, thread_name_prefix="wingsbak-download")
_busy = 0  # pumps submitted and not finished (event-loop thread only)
_active: set[int] = set()  # socket descriptors the pumps are using
_active_lock = threading.Lock()


def _pump(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Send ``count`` bytes of the file from ``offset``; returns the bytes sent.

    Both descriptors are this pump's own duplicates (closed here), so a connection or file
    closed meanwhile can never make it write into a reused descriptor number."""
    try:
        poller = select.poll()
        poller.register(sock_fd, select.POLLOUT)
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
            except BlockingIOError:
                if not poller.poll(STALL_TIMEOUT_MS):
                    raise ConnectionResetError("the client stopped reading") from None
                continue
            if n == 0:  # the file is shorter than announced
                break
            sent += n
        return sent
    finally:
        with _active_lock:
            _active.discard(sock_fd)
        os.close(sock_fd)
        os.close(file_fd)


def stop_pumps() -> int:
    """Shut down the connections pumps are sending on (a stopping daemon): their sendfile
    fails at once instead of holding the process until the client has read everything."""
    with _active_lock:
        for fd in _active:
            with contextlib.suppress(OSError):
                s = socket.socket(fileno=os.dup(fd))
                try:
                    s.shutdown(socket.SHUT_RDWR)
                finally:
                    s.close()
        return len(_active)


def _release() -> None:
    global _busy
    _busy -= 1


def _pump_done(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is gone: nothing left to count
        loop.call_soon_threadsafe(_release)


@dataclass(frozen=True, slots=True)
class Reply:
    """What a request for the archive gets: 200 (all of it) or 206 (``count`` bytes from
    ``offset``), which send it; 304 (the client's copy is current), 412 (a precondition
    failed) or 416 (the range starts past the end), which do not."""

    status: int
    offset: int = 0
    count: int = 0

    @property
    def sends_archive(self) -> bool:
        return self.status in (200, 206)


def etag_of(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"  # the value FileResponse uses


def reply_for(request: web.BaseRequest, st: os.stat_result) -> Reply:
    """RFC 9110's preconditions (in the order of its section 13.2.2) and a single byte range
    (several are ignored: all of it), for the archive whose ``fstat`` is ``st``."""
    tag = etag_of(st)
    modified = int(st.st_mtime)  # what Last-Modified says: whole seconds
    if_match = request.if_match
    if if_match is not None:
        if not _tag_in(tag, if_match, weak=False):
            return Reply(412)
    elif (since := request.if_unmodified_since) is not None and modified > since.timestamp():
        return Reply(412)
    if_none_match = request.if_none_match
    if if_none_match is not None:
        if _tag_in(tag, if_none_match, weak=True):
            return Reply(304)
    elif (since := request.if_modified_since) is not None and modified <= since.timestamp():
        return Reply(304)
    size = st.st_size
    if hdrs.RANGE not in request.headers or not _if_range_holds(request, tag, modified):
        return Reply(200, 0, size)
    if "," in request.headers[hdrs.RANGE]:
        # Several ranges: RFC 9110 (14.2) lets a server ignore Range, and the whole archive is
        # what a multipart answer of pieces of a gzip stream would be reassembled into.
        return Reply(200, 0, size)
    try:
        wanted = request.http_range
    except ValueError:
        return Reply(416)
    start, stop = wanted.start, wanted.stop
    if start is None:  # http_range refuses a Range with neither end: not reached
        return Reply(200, 0, size)
    if start < 0:  # "bytes=-N": the last N bytes
        start = max(0, size + start)
    stop = size if stop is None else min(stop, size)
    if start >= size:
        return Reply(416)
    return Reply(206, start, stop - start)


def _tag_in(tag: str, tags: Iterable[ETag], *, weak: bool) -> bool:
    return any(t.value == "*" or (t.value == tag and (weak or not t.is_weak)) for t in tags)


def _if_range_holds(request: web.BaseRequest, tag: str, modified: int) -> bool:
    """Whether the Range applies: no If-Range, or one naming this very archive (an entity tag,
    compared strongly, or a date not before its modification). Otherwise all of it is sent."""
    value = request.headers.get(hdrs.IF_RANGE)
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == f'"{tag}"'
    date = request.if_range
    return date is not None and modified <= date.timestamp()


def set_validators(response: web.StreamResponse, st: os.stat_result) -> None:
    response.etag = etag_of(st)
    response.last_modified = st.st_mtime


class ArchiveResponse(web.StreamResponse):
    """A 200 or 206 :class:`Reply` of the open ``archive`` (``st``: its ``fstat``), closed here
    once sent (or once sending failed). ``on_end_sent`` runs when its last byte has gone out."""

    def __init__(
        self,
        archive: IO[bytes],
        st: os.stat_result,
        reply: Reply,
        *,
        headers: dict[str, str],
        on_end_sent: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        assert reply.sends_archive, reply
        super().__init__(status=reply.status, headers=headers)
        set_validators(self, st)
        self.headers[hdrs.ACCEPT_RANGES] = "bytes"
        if reply.status == 206:
            last = reply.offset + reply.count - 1
            self.headers[hdrs.CONTENT_RANGE] = f"bytes {reply.offset}-{last}/{st.st_size}"
        self.content_length = reply.count
        self._archive = archive
        self._reply = reply
        self._size = st.st_size
        self._on_end_sent = on_end_sent

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            offset, count = self._reply.offset, self._reply.count
            if request.method == hdrs.METH_HEAD or count == 0:
                return writer
            await self._send_body(request, offset, count)
            await super().write_eof()
            if self._on_end_sent is not None and offset + count == self._size:
                await self._on_end_sent()
            return writer
        finally:
            self._archive.close()

    async def _send_body(self, request: web.BaseRequest, offset: int, count: int) -> None:
        global _busy
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        sock = transport.get_extra_info("socket")
        if (
            sock is None
            or transport.get_extra_info("sslcontext") is not None
            or _busy >= PUMP_THREADS
        ):
            # asyncio's sendfile, which reads and writes by itself where sendfile(2) can't
            # serve (TLS), as aiohttp's FileResponse does.
            await asyncio.get_running_loop().sendfile(transport, self._archive, offset, count)
            return
        while transport.get_write_buffer_size():  # the headers must leave before the body
            await asyncio.sleep(0.001)
        loop = asyncio.get_running_loop()
        sock_fd = os.dup(sock.fileno())
        file_fd = os.dup(self._archive.fileno())
        with _active_lock:
            _active.add(sock_fd)
        _busy += 1
        transport.pause_reading()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            pumped = _pool.submit(_pump, sock_fd, file_fd, offset, count)
            # Counted free only when the thread is, even if this handler is cancelled.
            pumped.add_done_callback(lambda _f: _pump_done(loop))
            sent = await asyncio.wrap_future(pumped)
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            if not transport.is_closing():
                transport.resume_reading()
        if sent < count:
            raise ConnectionResetError("the archive is shorter than its size")
