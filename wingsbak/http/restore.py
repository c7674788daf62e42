"""POST /api/servers/{server}/backup/{backup}/restore."""

from __future__ import annotations

from aiohttp import web

from wingsbak.appkeys import JOBS
from wingsbak.errors import BadRequest
from wingsbak.formats import ADAPTERS, S3_ADAPTER
from wingsbak.http.validation import optional_str, path_uuid, read_json_object, server_root_or_404

routes = web.RouteTableDef()


@routes.post("/api/servers/{server}/backup/{backup}/restore")
async def restore_backup(request: web.Request) -> web.Response:
    server = path_uuid(request, "server", "server")
    backup = path_uuid(request, "backup", "backup")
    body = await read_json_object(request)
    adapter = body.get("adapter")
    if adapter not in ADAPTERS:
        raise BadRequest("The 'adapter' field must be 'wings' or 's3'.")
    truncate = body.get("truncate_directory", False)
    if not isinstance(truncate, bool):
        raise BadRequest("The 'truncate_directory' field must be true or false.")
    download_url = optional_str(body, "download_url") if adapter == S3_ADAPTER else ""
    await server_root_or_404(request, server)
    await request.app[JOBS].submit_restore(server, backup, adapter, truncate, download_url)
    return web.json_response({}, status=202)
