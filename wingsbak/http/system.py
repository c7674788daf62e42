"""Node state for the panel and the service manager."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from typing import Any

from aiohttp import web

from wingsbak import __version__
from wingsbak.answers import check_bearer
from wingsbak.appkeys import CONFIG, JOBS, METRICS
from wingsbak.archive.codecs import HAVE_ISAL
from wingsbak.metrics import CONTENT_TYPE_LATEST
from wingsbak.storage.bucket import S3Config

routes = web.RouteTableDef()


# Go's names for the machine (runtime.GOARCH), which Wings reports.
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386", "armv7l": "arm"}


@routes.get("/api/system")
async def system(request: web.Request) -> web.Response:
    """Wings' answer (router/router_system.go): the five fields both panels read (Pelican's
    ``DaemonSystemRepository`` refuses an answer without them); ``?v=2`` is Wings' full
    ``system.Information``, which Pterodactyl's telemetry asks for. wingsbak knows no Docker:
    those fields are empty. On a node behind wingsbak's front, Wings answers this itself."""
    info = _SYSTEM_INFORMATION or await asyncio.to_thread(_system_information)
    if request.query.get("v") == "2":
        return web.json_response(info)
    return web.json_response(
        {
            "architecture": info["system"]["architecture"],
            "cpu_count": info["system"]["cpu_threads"],
            "kernel_version": info["system"]["kernel_version"],
            "os": info["system"]["os_type"],
            "version": info["version"],
        }
    )


_SYSTEM_INFORMATION: dict[str, Any] = {}  # filled once: none of it changes while running


def _system_information() -> dict[str, Any]:
    """Wings' ``system.GetSystemInformation`` shape (reads /etc/os-release: a worker thread)."""
    machine = platform.machine()
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        release = {}
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        memory = 0
    info: dict[str, Any] = {"version": __version__}
    info["docker"] = {
        "version": "",
        "cgroups": {"driver": "", "version": ""},
        "containers": {"total": 0, "running": 0, "paused": 0, "stopped": 0},
        "storage": {"driver": "", "filesystem": ""},
        "runc": {"version": ""},
    }
    info["system"] = {
        "architecture": _GO_ARCH.get(machine, machine.lower()),
        "cpu_threads": os.cpu_count() or 1,
        "memory_bytes": memory,
        "kernel_version": platform.release(),
        "os": release.get("PRETTY_NAME") or release.get("NAME") or sys.platform,
        "os_type": sys.platform,
    }
    _SYSTEM_INFORMATION.update(info)  # whole, in one step: a request reading it sees all or none
    return info


@routes.get("/api/wingsbak")
async def wingsbak_status(request: web.Request) -> web.Response:
    """wingsbak's own state: its jobs, its compressor, whether it has S3 credentials."""
    cfg = request.app[CONFIG]
    return web.json_response(
        {
            "version": __version__,
            "daemon": "wingsbak",
            "python": platform.python_version(),
            "compression": "isal" if HAVE_ISAL else "zlib",
            "s3_direct": S3Config.enabled(cfg),
            "store": cfg.system.backups.store,  # where wings-adapter backups go
            "jobs": request.app[JOBS].state(),
        }
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    status = 200 if request.app[JOBS].is_accepting() else 503
    return web.json_response({"status": "ok" if status == 200 else "stopping"}, status=status)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    if not cfg.api.metrics_public:
        check_bearer(request, cfg.token)
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
