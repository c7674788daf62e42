"""The restore download client: an accepted restore URL (:mod:`wingsbak.urlguard`) streamed
as the gzip source of a restore, and the guard that keeps any restore source (a download, an
S3 body) from holding a restore or a stopping daemon.

Every function here blocks (DNS, sockets): call them from a worker thread, as the restore
engine is.

DNS rebinding: :func:`open_restore_stream` resolves the name once, checks every address, and
then connects to one of *those* addresses (the Host header and TLS server name stay the URL's
host, so virtual hosting and certificate checks work as usual). A second resolution that
answers 127.0.0.1 therefore never gets a connection. Redirects are followed (at most
:data:`MAX_REDIRECTS`, as S3-compatible stores behind a CDN send them), each hop resolved and
checked like the first, so a public URL cannot bounce the node inwards. Proxy environment
variables are ignored for the same reason.

A slow source cannot hold a restore (or a stopping daemon): each read waits at most the idle
timeout, and :class:`ReadDeadline` cuts a read short from outside when the restore is cancelled
or its overall deadline has passed, by shutting the connection down under it.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin

from wingsbak.archive.codecs import GZIP
from wingsbak.archive.extract import RestoreError
from wingsbak.archive.ratelimit import Cancelled
from wingsbak.urlguard import ResolvedURL, resolve_restore_url

__all__ = [
    "DownloadError",
    "GuardedStream",
    "HTTPArchiveStream",
    "ReadDeadline",
    "SourceUnreachable",
    "open_restore_stream",
    "shutdown_socket_under",
]

# Answers that are certainly an error page, not an archive, whatever their first bytes.
_NOT_ARCHIVE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml")
READ_TIMEOUT = 60.0
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# How often the watcher of a restore source looks at the cancel event and the deadline.
WATCH_INTERVAL = 0.2


class DownloadError(RestoreError):
    """Fetching the archive failed: refused answer, not gzip, or the connection broke."""


class SourceUnreachable(DownloadError):
    """No connection to the download host could be made (a gateway failure, not the URL's)."""


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a checked address instead of resolving the host name again."""

    def __init__(self, resolved: ResolvedURL, address: str, timeout: float) -> None:
        super().__init__(resolved.host, resolved.port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, resolved: ResolvedURL, address: str, timeout: float) -> None:
        super().__init__(
            resolved.host, resolved.port, timeout=timeout, context=ssl.create_default_context()
        )
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # Certificate and SNI are checked against the URL's host, not the address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class ReadDeadline:
    """Watches a restore source from a small thread: once ``cancel`` is set or ``deadline``
    seconds (0: none) have passed, it calls ``abort`` (which shuts the connection down, so a
    read blocked in the kernel returns at once) and :meth:`check` raises why from then on."""

    def __init__(
        self,
        abort: Callable[[], None],
        *,
        cancel: threading.Event | None = None,
        deadline: float = 0,
    ) -> None:
        self._abort = abort
        self._cancel = cancel
        self._deadline = deadline
        self._ends = time.monotonic() + deadline if deadline > 0 else math.inf
        self._stop = threading.Event()
        self.tripped: Exception | None = None
        self._thread = threading.Thread(target=self._watch, name="wingsbak-restore-watch")
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            if self._cancel is not None and self._cancel.is_set():
                self.tripped = Cancelled("restore cancelled")
            elif time.monotonic() >= self._ends:
                self.tripped = DownloadError(
                    f"the download did not finish within {self._deadline:g} s "
                    "(system.backups.restore_deadline)"
                )
            else:
                continue
            with contextlib.suppress(OSError):
                self._abort()
            return

    def check(self) -> None:
        if self.tripped is not None:
            raise self.tripped

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class GuardedStream:
    """A restore source (a download, an S3 body) whose reads end, with the reason, once a
    cancel or the deadline tripped its :class:`ReadDeadline`; ``abort`` ends a read in
    progress. Closing it closes the source."""

    def __init__(
        self,
        raw: Any,
        abort: Callable[[], None],
        *,
        cancel: threading.Event | None = None,
        deadline: float = 0,
    ) -> None:
        self.raw = raw
        self.guard = ReadDeadline(abort, cancel=cancel, deadline=deadline)

    def read(self, n: int = -1) -> bytes:
        self.guard.check()
        try:
            data: bytes = self.raw.read(n)
        except Exception:
            self.guard.check()  # the abort broke the read: say why, not how
            raise
        self.guard.check()
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.guard.close()
        self.raw.close()


def shutdown_socket_under(body: Any) -> None:
    """Shut down the socket a streamed HTTP body (botocore's over urllib3's over
    http.client's) reads from; close the body where the socket cannot be found."""
    raw = getattr(body, "_raw_stream", body)  # botocore StreamingBody -> urllib3 response
    fp = getattr(getattr(raw, "_fp", None), "fp", None)  # http.client response's file
    sock = getattr(getattr(fp, "raw", None), "_sock", None)  # socket.SocketIO's socket
    if isinstance(sock, socket.socket):
        sock.shutdown(socket.SHUT_RDWR)
    else:
        body.close()


class HTTPArchiveStream:
    """The body of a 200 answer carrying gzip, as a readable for
    :func:`wingsbak.archive.extract.extract_archive`. Read errors, and a body shorter than its
    ``Content-Length``, raise :class:`DownloadError`."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self._conn = conn
        self._response = response
        length = response.getheader("Content-Length")
        self.size = int(length) if length and length.isdigit() else 0  # 0: unknown
        self.received = 0
        self._head = b""
        self._check_gzip()

    def _check_gzip(self) -> None:
        ctype = (self._response.getheader("Content-Type") or "").lower()
        if ctype.startswith(_NOT_ARCHIVE_TYPES):
            raise DownloadError(
                f"the download is not a {GZIP.name} archive (Content-Type {ctype})"
            )
        head = b""
        while len(head) < len(GZIP.magic):
            piece = self._raw_read(len(GZIP.magic) - len(head))
            if not piece:
                break
            head += piece
        if head != GZIP.magic:
            raise DownloadError(f"the download is not a {GZIP.name} archive (wrong first bytes)")
        self._head = head

    def _raw_read(self, n: int) -> bytes:
        try:
            data = self._response.read(n)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"the download broke after {self.received} bytes: {exc or type(exc).__name__}"
            ) from exc
        self.received += len(data)
        if not data and self.size and self.received < self.size:
            raise DownloadError(f"the download broke after {self.received} of {self.size} bytes")
        return data

    def read(self, n: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            if n is not None and 0 <= n <= len(head):
                self._head = head[n:]
                return head[:n]
            rest = self._raw_read(n - len(head)) if n is not None and n > 0 else b""
            return head + rest
        if n is None or n < 0:
            chunks = []
            while chunk := self._raw_read(1024 * 1024):
                chunks.append(chunk)
            return b"".join(chunks)
        return self._raw_read(n)

    def readable(self) -> bool:
        return True

    def abort(self) -> None:
        """From another thread: end a read in progress (the socket is shut down under it)."""
        if self._conn.sock is not None:
            self._conn.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._response.close()
        self._conn.close()

    def __enter__(self) -> HTTPArchiveStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_restore_stream(
    url: str,
    allowlist: Iterable[str] = (),
    *,
    timeout: float = READ_TIMEOUT,
    open_timeout: float | None = None,
) -> HTTPArchiveStream:
    """GET ``url`` after :func:`resolve_restore_url`, connected to a checked address, following
    up to :data:`MAX_REDIRECTS` redirects, each hop checked again.

    Raises :class:`UnsafeURL` (refused before any connection to that hop),
    :class:`SourceUnreachable` (no connection) or :class:`DownloadError` (an answer other than
    200, too many redirects, not gzip). ``open_timeout`` (default ``timeout``) bounds each
    socket operation until the archive's first bytes are in; ``timeout`` each one after, so a
    stalled server fails the restore instead of hanging it.
    """
    allow = list(allowlist)
    for _hop in range(MAX_REDIRECTS + 1):
        resolved = resolve_restore_url(url, allow)
        conn, response = _get(resolved, timeout if open_timeout is None else open_timeout)
        if response.status in _REDIRECT_STATUSES:
            location = response.getheader("Location")
            conn.close()
            if not location:
                raise DownloadError(f"the download answered {response.status} without a Location")
            url = urljoin(url, location)
            continue
        if response.status != 200:
            conn.close()
            raise DownloadError(
                f"the download answered {response.status} {response.reason}, not 200"
            )
        try:
            stream = HTTPArchiveStream(conn, response)
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return stream
        except BaseException:
            conn.close()
            raise
    raise DownloadError(f"the download was redirected more than {MAX_REDIRECTS} times")


def _get(
    resolved: ResolvedURL, timeout: float
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """The answer's head, from the first checked address that takes the connection."""
    cls = _PinnedHTTPSConnection if resolved.scheme == "https" else _PinnedHTTPConnection
    last: Exception | None = None
    for address in resolved.addresses:
        conn = cls(resolved, address, timeout)
        try:
            conn.request(
                "GET",
                resolved.target,
                headers={"Accept-Encoding": "identity", "User-Agent": "wingsbak-restore"},
            )
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            last = exc
    raise SourceUnreachable(f"cannot connect to {resolved.host}: {last}")
