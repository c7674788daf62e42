"""Backup routes: create, delete (restore lives in restore.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from wingsbak.appkeys import JOBS, STORES
from wingsbak.errors import BadRequest, Conflict, NotFound
from wingsbak.formats import ADAPTERS
from wingsbak.http.validation import (
    optional_str,
    path_uuid,
    read_json_object,
    require_uuid,
    server_root_or_404,
)
from wingsbak.log import get_logger
from wingsbak.wings import lifecycle

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
    # The panel takes no backup while a server is being transferred: it is still here.
    await lifecycle.server_here(request.app, server)
    return web.json_response({}, status=202)


@routes.delete("/api/servers/{server}/backup/{backup}")
async def delete_backup(request: web.Request) -> web.Response:
    server = path_uuid(request, "server", "server")
    backup = path_uuid(request, "backup", "backup")
    if request.app[JOBS].is_writing(backup):
        raise Conflict("The backup is still being written.")
    # A backup is in one store: found where it is, whichever store the node uses now. A
    # store that fails (an S3 outage, an unreachable repository) is a 502 in the middleware.
    store = await asyncio.to_thread(request.app[STORES].locate, server, backup)
    if store is None or not await asyncio.to_thread(store.delete, server, backup):
        raise NotFound("The requested backup does not exist on this node.")
    log.info("backup_deleted", server=server, backup=backup, store=store.name)
    return web.Response(status=204)
