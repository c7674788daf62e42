"""A restic REST server for the tests: the protocol of restic's rest-server (doc/REST_backend
in restic/restic), files kept in a directory, and switches that make it answer 503 to chosen
requests, as a server whose storage went away does, or answer them late.

As rest-server does by default, an upload whose SHA-256 is not its name is refused (400), a
file is written under a temporary name and then renamed, and the config is never deleted.

    POST /?create=true            create the repository
    HEAD|GET|POST /config         the config file
    GET /<type>/                  list (v2 JSON with sizes when asked for, else names)
    HEAD|GET|POST|DELETE /<type>/<name>
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.daemon_helpers import free_port
from tests.support.restic_helpers import oracle, restic_backups

TYPES = ("data", "keys", "locks", "snapshots", "index")
V2 = "application/vnd.x.restic.rest.v2"
_NAME = re.compile(r"^[0-9a-f]{64}$")


class RestStandin:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.requests: list[str] = []
        self.refused: list[str] = []
        # Requests this predicate picks get a 503 (method, path).
        self.fail: Callable[[str, str], bool] = lambda method, path: False
        # Seconds to wait before handling a request (method, path).
        self.delay: Callable[[str, str], float] = lambda method, path: 0.0
        self._runner: web.AppRunner | None = None

    async def start(self) -> RestStandin:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _file(self, parts: list[str]) -> Path | None:
        if parts == ["config"]:
            return self.root / "config"
        if len(parts) == 2 and parts[0] in TYPES and _NAME.match(parts[1]):
            sub = parts[1][:2] if parts[0] == "data" else ""
            return self.root / parts[0] / sub / parts[1]
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        self.requests.append(f"{method} {path}")
        if self.fail(method, path):
            self.refused.append(f"{method} {path}")
            return web.Response(status=503, text="storage unavailable")
        # Held while the delay lasts, or until ``delay`` stops picking the request.
        loop = asyncio.get_running_loop()
        until = loop.time() + self.delay(method, path)
        while loop.time() < until and self.delay(method, path):
            await asyncio.sleep(0.05)
        parts = [p for p in path.split("/") if p]
        if not parts and method == "POST" and request.query.get("create") == "true":
            for kind in TYPES:
                (self.root / kind).mkdir(parents=True, exist_ok=True)
            return web.Response()
        if len(parts) == 1 and parts[0] in TYPES and path.endswith("/") and method == "GET":
            return self._list(request, parts[0])
        target = self._file(parts)
        if target is None:
            return web.Response(status=400, text="bad path")
        if method == "POST":
            body = await request.read()
            if parts != ["config"] and hashlib.sha256(body).hexdigest() != parts[1]:
                return web.Response(status=400, text="file content does not match hash")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                return web.Response(status=403, text="already exists")
            partial = target.with_name(f".{target.name}.tmp")
            partial.write_bytes(body)
            os.replace(partial, target)
            return web.Response()
        if not target.is_file():
            return web.Response(status=404)
        if method == "DELETE" and parts != ["config"]:
            target.unlink()
            return web.Response()
        if method in ("HEAD", "GET"):
            return web.FileResponse(target)  # the length for HEAD; a Range gets a 206
        return web.Response(status=405)

    def _list(self, request: web.Request, kind: str) -> web.Response:
        files = sorted(p for p in (self.root / kind).rglob("*") if _NAME.match(p.name))
        if V2 in request.headers.get("Accept", ""):
            body = [{"name": p.name, "size": p.stat().st_size} for p in files]
            return web.Response(body=json.dumps(body).encode(), content_type=V2)
        return web.json_response([p.name for p in files])


@contextlib.asynccontextmanager
async def rest_repository(
    tmp: Path, **over: Any
) -> AsyncIterator[tuple[RestStandin, dict[str, Any]]]:
    """A stand-in REST server holding an initialised repository, and the ``system.backups``
    keys of a daemon whose wings backups go to it (``over``: more ``restic`` keys)."""
    rest = await RestStandin(tmp / "rest").start()
    try:
        backups = restic_backups(tmp, f"rest:{rest.url}", **over)
        # The stand-in serves on this loop: restic run by hand goes to a thread.
        init = await asyncio.to_thread(oracle, backups["restic"], "init")
        assert init.returncode == 0, init.stderr
        yield rest, backups
    finally:
        await rest.stop()
