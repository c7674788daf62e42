"""Node state for the panel and the service manager."""

from __future__ import annotations

import platform

from aiohttp import web

from wingsbak import __version__
from wingsbak.archive.gzip import HAVE_ISAL
from wingsbak.http.middleware import check_bearer
from wingsbak.http.state import CONFIG, JOBS
from wingsbak.metrics import CONTENT_TYPE_LATEST

routes = web.RouteTableDef()


@routes.get("/api/system")
async def system(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    return web.json_response(
        {
            "version": __version__,
            "daemon": "wingsbak",
            "python": platform.python_version(),
            "compression": "isal" if HAVE_ISAL else "zlib",
            "s3_direct": cfg.s3_enabled,
            "jobs": request.app[JOBS].state(),
        }
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    jobs = request.app[JOBS]
    status = 200 if jobs.accepting else 503
    return web.json_response({"status": "ok" if status == 200 else "stopping"}, status=status)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    if not cfg.api.metrics_public:
        check_bearer(request, cfg.token)
    body = request.app[JOBS].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
