"""GET /download/backup?token=<JWT>: the panel-signed, one-time download link."""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from wingsbak.errors import NotFound, TokenRejected
from wingsbak.http.sendfile import ArchiveFileResponse
from wingsbak.http.state import CONFIG, JOBS, STORAGE, USED_TOKENS
from wingsbak.http.validation import is_uuid
from wingsbak.log import get_logger
from wingsbak.storage.local import archive_name
from wingsbak.tokens import decode_token

log = get_logger(__name__)
routes = web.RouteTableDef()


@routes.get("/download/backup")
async def download_backup(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token", "")
    claims = decode_token(
        token, request.app[CONFIG].token, ["server_uuid", "backup_uuid", "unique_id"]
    )
    server, backup = claims["server_uuid"], claims["backup_uuid"]
    if not is_uuid(server) or not is_uuid(backup):
        raise TokenRejected("the token names no valid server or backup")
    path = await asyncio.to_thread(request.app[STORAGE].find, server, backup)
    redirect = None
    s3 = request.app[JOBS].s3
    if path is None and s3 is not None and await asyncio.to_thread(s3.exists, server, backup):
        # A backup in the node's bucket: a pre-signed link valid for 15 minutes.
        redirect = await asyncio.to_thread(s3.presigned_download_url, server, backup)
    if path is None and redirect is None:
        raise NotFound("The requested backup does not exist on this node.")
    address = request.remote or ""
    resume_from = _range_start(request)
    used = request.app[USED_TOKENS]
    unique_id = claims["unique_id"]
    fresh = await asyncio.to_thread(
        used.claim, unique_id, float(claims["exp"]), address, resume_from
    )
    if not fresh:
        log.warning("download_token_replayed", server=server, backup=backup)
        raise TokenRejected("the token has already been used")
    if redirect is not None:
        raise web.HTTPFound(redirect)
    log.info("backup_download", server=server, backup=backup, resume_from=resume_from)
    request.app[JOBS].metrics.downloads.inc()

    async def finished() -> None:  # the last byte went out: the link can't be resumed now
        await asyncio.to_thread(used.complete, unique_id)

    return ArchiveFileResponse(
        path,
        chunk_size=1024 * 1024,
        headers={
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_DISPOSITION: f'attachment; filename="{archive_name(backup)}"',
        },
        on_end_sent=finished,
    )


def _range_start(request: web.Request) -> int:
    """The first byte a ``Range: bytes=N-...`` asks for; 0 without (or with another) Range."""
    if hdrs.RANGE not in request.headers:
        return 0
    try:
        start = request.http_range.start
    except ValueError:
        return 0
    return start if start is not None and start > 0 else 0
