"""GET /download/backup?token=<JWT>: the panel-signed, one-time download link.

Only an answer that hands the archive out spends the link: a 200 or a 206 (a resume, see
:class:`wingsbak.tokens.UsedTokens`), or the redirect to the node's bucket. A HEAD, a 304, a
412 or a 416 leaves it usable (and is refused, as a GET would be, once it is spent). The
archive is opened before the link is spent and served from that descriptor: a DELETE racing
the download either comes too late to matter or leaves a JSON 404 and an unspent link.

A backup in a restic repository is an archive made while it is sent: no length, no range
(a Range header is answered with the whole archive), no validators.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from typing import IO, Any

from aiohttp import hdrs, web

from wingsbak.appkeys import CONFIG, METRICS, STORAGE, STORES, USED_TOKENS
from wingsbak.archive.codecs import download_filename
from wingsbak.archive.ratelimit import Cancelled
from wingsbak.errors import NotFound, PreconditionFailed, RangeNotSatisfiable, TokenRejected
from wingsbak.http.sendfile import ArchiveResponse, Reply, reply_for, set_validators
from wingsbak.log import get_logger
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.storage.base import Redirect, StreamedArchive
from wingsbak.storage.local import LocalStore
from wingsbak.tokens import decode_token
from wingsbak.uuids import is_uuid

log = get_logger(__name__)
routes = web.RouteTableDef()


@routes.get("/download/backup")
async def download_backup(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token", "")
    claims = decode_token(
        token,
        request.app[CONFIG].token,
        ["server_uuid", "backup_uuid", "unique_id"],
        scope="backup-download",
    )
    server, backup = claims["server_uuid"], claims["backup_uuid"]
    if not is_uuid(server) or not is_uuid(backup):
        raise TokenRejected("the token names no valid server or backup")
    opened = await asyncio.to_thread(_open_archive, request.app[STORAGE], server, backup)
    if opened is None:
        return await _from_store(request, claims)
    archive, st = opened
    try:
        reply = reply_for(request, st)
        sends = reply.sends_archive and request.method != hdrs.METH_HEAD
        await _use_link(request, claims, reply.offset if reply.status == 206 else 0, sends)
        if not reply.sends_archive:
            archive.close()
            return _without_archive(reply, st)
    except BaseException:
        archive.close()
        raise
    if sends:
        log.info("backup_download", server=server, backup=backup, resume_from=reply.offset)
        request.app[METRICS].downloads.inc()

    async def finished() -> None:  # the last byte went out: the link can't be resumed now
        await asyncio.to_thread(request.app[USED_TOKENS].complete, claims["unique_id"])

    return ArchiveResponse(
        archive, st, reply, headers=_headers(backup), on_end_sent=finished if sends else None
    )


def _open_archive(
    storage: BackupDirectory, server: str, backup: str
) -> tuple[IO[bytes], os.stat_result] | None:
    """The backup's archive, open for reading, and its status; None when it is not on this node,
    or no longer: deleted between being found and being opened."""
    path = storage.find(server, backup)
    if path is None:
        return None
    try:
        archive = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        return archive, os.fstat(archive.fileno())
    except BaseException:
        archive.close()
        raise


async def _use_link(
    request: web.Request, claims: dict[str, Any], resume_from: int, spend: bool
) -> None:
    """Spend the one-time link (``spend``), or only check that it is still good."""
    used = request.app[USED_TOKENS]
    unique_id, address = claims["unique_id"], request.remote or ""
    if spend:
        expires = float(claims["exp"])
        fresh = await asyncio.to_thread(used.claim, unique_id, expires, address, resume_from)
    else:
        fresh = await asyncio.to_thread(used.accepts, unique_id, address, resume_from)
    if not fresh:
        log.warning(
            "download_token_replayed", server=claims["server_uuid"], backup=claims["backup_uuid"]
        )
        raise TokenRejected("the token has already been used")


def _without_archive(reply: Reply, st: os.stat_result) -> web.StreamResponse:
    """The answer to a request whose conditions or range leave nothing to send."""
    if reply.status == 412:
        raise PreconditionFailed("The archive does not meet the request's preconditions.")
    if reply.status == 416:
        raise RangeNotSatisfiable("The requested range starts past the archive's end.", st.st_size)
    response = web.Response(status=reply.status)  # 304: the client's copy is this archive
    set_validators(response, st)
    return response


async def _from_store(request: web.Request, claims: dict[str, Any]) -> web.StreamResponse:
    """A backup that is not on the node's disk. In the node's bucket: a redirect to a
    pre-signed link valid for 15 minutes. In a restic repository: the snapshot as an
    archive made on the fly. A HEAD gets the headers only: the link is what a token buys,
    and a HEAD must not spend it. A store failure becomes a 502 in the middleware."""
    server, backup = claims["server_uuid"], claims["backup_uuid"]
    for store in request.app[STORES].all:
        if isinstance(store, LocalStore):
            continue  # looked at already, served from its open descriptor
        found = await asyncio.to_thread(store.open_download, server, backup)
        if found is not None:
            break
    else:
        raise NotFound("The requested backup does not exist on this node.")
    if request.method == hdrs.METH_HEAD:
        await _use_link(request, claims, 0, spend=False)
        response = web.StreamResponse(headers=_headers(backup))
        if isinstance(found, Redirect):
            response.content_length = found.size
        return response
    if isinstance(found, Redirect):
        await _use_link(request, claims, _range_start(request), spend=True)
        raise web.HTTPFound(await asyncio.to_thread(found.url))
    assert isinstance(found, StreamedArchive)
    return await _stream(request, claims, found)


class _End:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


STREAM_CHUNKS_AHEAD = 8


async def _stream(
    request: web.Request, claims: dict[str, Any], archive: StreamedArchive
) -> web.StreamResponse:
    """Send what ``archive.write`` produces on a thread of its own, a few chunks ahead of
    the client at most (memory stays flat); a client that goes away stops the producer."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | _End] = asyncio.Queue()
    room = threading.Semaphore(STREAM_CHUNKS_AHEAD)
    cancel = threading.Event()

    class QueueSink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: bytes | memoryview, /) -> int:  # type: ignore[override]
            while not room.acquire(timeout=0.5):
                if cancel.is_set():
                    raise Cancelled("the client went away")
            if cancel.is_set():
                raise Cancelled("the client went away")
            loop.call_soon_threadsafe(chunks.put_nowait, bytes(data))
            return len(data)

    def produce() -> None:
        end = _End(None)
        try:
            archive.write(QueueSink(), cancel)
        except BaseException as exc:
            end = _End(exc)
        with contextlib.suppress(RuntimeError):  # the loop closed while stopping
            loop.call_soon_threadsafe(chunks.put_nowait, end)

    server, backup = claims["server_uuid"], claims["backup_uuid"]
    await _use_link(request, claims, 0, spend=True)
    threading.Thread(target=produce, name="wingsbak-stream", daemon=True).start()
    response = web.StreamResponse(headers=_headers(backup))
    try:
        first = await chunks.get()
        if isinstance(first, _End) and first.error is not None:
            raise first.error  # nothing sent yet: the middleware answers
        log.info("backup_download", server=server, backup=backup, streamed=True)
        request.app[METRICS].downloads.inc()
        await response.prepare(request)
        item = first
        while not isinstance(item, _End):
            room.release()
            await response.write(item)
            item = await chunks.get()
        if item.error is not None:
            # Headers are gone: the client sees a cut-off answer, never a complete-looking one.
            log.error("backup_download_failed", server=server, backup=backup, error=str(item.error))
            raise ConnectionResetError("the archive could not be made")
        await response.write_eof()
    finally:
        cancel.set()
    await asyncio.to_thread(request.app[USED_TOKENS].complete, claims["unique_id"])
    return response


def _headers(backup: str) -> dict[str, str]:
    return {
        hdrs.CONTENT_TYPE: "application/octet-stream",
        hdrs.CONTENT_DISPOSITION: f'attachment; filename="{download_filename(backup)}"',
    }


def _range_start(request: web.Request) -> int:
    """The first byte a ``Range: bytes=N-...`` asks for; 0 without (or with another) Range."""
    if hdrs.RANGE not in request.headers:
        return 0
    try:
        start = request.http_range.start
    except ValueError:
        return 0
    return start if start is not None and start > 0 else 0
