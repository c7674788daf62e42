"""Archive downloads at the speed of the kernel.

aiohttp's ``FileResponse`` already uses sendfile(2), through the event loop. Measured on this
project's benchmark (bench/api.py, 1 GB over loopback), that reaches about 0.65x of nginx;
what closes the gap is what nginx does: ``TCP_CORK`` while the body goes out (full segments
only) and sendfile calls that are not interleaved with event-loop work. So the body is pumped
from a small dedicated thread pool (poll + sendfile on the connection's socket, the
connection's reading paused meanwhile). Everything else (Range, If-Range, headers) is
aiohttp's; when all pump threads are busy, or on TLS, aiohttp's own path serves the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from aiohttp import web
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


class ArchiveFileResponse(web.FileResponse):
    def __init__(
        self,
        *args: Any,
        on_end_sent: Callable[[], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_end_sent = on_end_sent

    async def _sendfile(  # type: ignore[override]
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        writer = await self._send_body(request, fobj, offset, count)
        if self._on_end_sent is not None and offset + count == os.fstat(fobj.fileno()).st_size:
            await self._on_end_sent()
        return writer

    async def _send_body(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        global _busy
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if (
            transport is None
            or sock is None
            or transport.get_extra_info("sslcontext") is not None
            or _busy >= PUMP_THREADS
        ):
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        while transport.get_write_buffer_size():  # the headers must leave before the body
            await asyncio.sleep(0.001)
        loop = asyncio.get_running_loop()
        sock_fd = os.dup(sock.fileno())
        file_fd = os.dup(fobj.fileno())
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
        await web.StreamResponse.write_eof(self)
        return writer
