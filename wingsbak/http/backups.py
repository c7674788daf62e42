"""Backup routes: create, delete (restore lives in restore.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from wingsbak.errors import BadRequest, Conflict, NotFound
from wingsbak.http.state import JOBS, STORAGE
from wingsbak.http.validation import (
    optional_str,
    path_uuid,
    read_json_object,
    require_uuid,
    server_root_or_404,
)
from wingsbak.jobs import ADAPTERS
from wingsbak.log import get_logger

log = get_logger(__name__)
routes = web.RouteTableDef()


@routes.post("/api/servers/{server}/backup")
async def create_backup(request: web.Request) -> web.Response:
    server = path_uuid(request, "server", "server")
    body = await read_json_object(request)
    adapter = body.get("adapter")
    if adapter not in ADAPTERS:
        raise BadRequest("The 'adapter' field must be 'wings' or 's3'.")
    backup = require_uuid(body.get("uuid"), "backup")
    ignore = optional_str(body, "ignore")
    await server_root_or_404(request, server)
    await request.app[JOBS].submit_backup(server, backup, adapter, ignore)
    return web.json_response({}, status=202)


@routes.delete("/api/servers/{server}/backup/{backup}")
async def delete_backup(request: web.Request) -> web.Response:
    server = path_uuid(request, "server", "server")
    backup = path_uuid(request, "backup", "backup")
    jobs = request.app[JOBS]
    if backup in jobs.backups:
        raise Conflict("The backup is still being written.")
    deleted = await asyncio.to_thread(request.app[STORAGE].delete, server, backup)
    if not deleted and jobs.s3 is not None:
        # A backup is on the node's disk or in its bucket, never both: S3 (and an S3 outage,
        # a 502 in the middleware) only matters to one that is not on the disk.
        deleted = await asyncio.to_thread(jobs.s3.delete, server, backup)
    if not deleted:
        raise NotFound("The requested backup does not exist on this node.")
    log.info("backup_deleted", server=server, backup=backup)
    return web.Response(status=204)
