"""The Wings stand-in's server deletion and transfers, and Pelican's ``User-Agent`` (kept apart
from tests/support/wings_standin.py, which wires them in with ``add_lifecycle_routes``).

- Pelican Wings sets ``User-Agent: Pelican Wings/v<version> (id:<token id>)`` on every answer
  that passes its bearer middleware, 401 and 403 included: every ``/api/...`` route but the
  websocket and ``POST /api/transfers``, unknown routes too, never an ``OPTIONS`` preflight
  (pelican-dev/wings ``router/router.go``, ``router/middleware/middleware.go``
  RequireAuthorization and SetAccessControlHeaders). Pterodactyl Wings never does.
- ``DELETE /api/servers/{s}`` (``router/router_server.go`` deleteServer): 204, the server is
  gone (404 afterwards); Pelican first removes ``<backup_dir>/<s>`` unless
  ``remove_backups_on_server_delete`` is false (``server/server.go`` RemoveAllServerBackups);
  Pterodactyl keeps every backup.
- ``POST /api/servers/{s}/transfer`` (``router/router_server_transfer.go``,
  ``server/transfer/source.go`` PushArchiveToTarget): 409 while one runs, else 202, then the
  server's files go as a multipart POST to ``url`` with ``Authorization: <token>``: ``archive``
  (a .tar.gz) and its sha256 (Pelican ``checksum_archive``, Pterodactyl ``checksum``); Pelican
  adds, for each uuid of ``backups`` found as ``<backup_dir>/<s>/<uuid>.tar.gz`` and nothing
  else, ``backup_<uuid>.tar.gz`` and ``checksum_backup_<uuid>.tar.gz``
  (``server/transfer/archive.go`` StreamBackups). The outcome lands in ``pushes``.
- ``POST /api/transfers`` is the stand-in's own (``WingsStandin._transfers``), writing Pelican's
  backups to ``backup_dir`` here.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from tests.support.panel_standin import PELICAN, TOKEN_ID

if TYPE_CHECKING:
    from tests.support.wings_standin import WingsStandin

PELICAN_VERSION = "1.0.0"


@dataclass
class WingsLifecycle:
    # Wings' system.backup_directory (None: this Wings has no backups to remove or send).
    backup_dir: Path | None = None
    remove_backups_on_server_delete: bool = True  # Pelican's key, config/config.go
    transferring: set[str] = field(default_factory=set)
    pushes: dict[str, str] = field(default_factory=dict)  # server -> "success" | the error


def checked_by_bearer(method: str, path: str) -> bool:
    """Whether Pelican's RequireAuthorization runs for this request (router/router.go)."""
    if method == "OPTIONS" or not path.startswith("/api/"):
        return False
    return not (path.endswith("/ws") and method == "GET") and path != "/api/transfers"


def add_lifecycle_routes(wings: WingsStandin, app: web.Application) -> None:
    app.on_response_prepare.append(functools.partial(_pelican_agent, wings))
    r = app.router
    r.add_delete("/api/servers/{server}", functools.partial(_delete_server, wings))
    r.add_post("/api/servers/{server}/transfer", functools.partial(_transfer_out, wings))


async def _pelican_agent(
    wings: WingsStandin, request: web.Request, response: web.StreamResponse
) -> None:
    if wings.flavour == PELICAN and checked_by_bearer(request.method, request.path):
        response.headers["User-Agent"] = f"Pelican Wings/v{PELICAN_VERSION} (id:{TOKEN_ID})"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _delete_server(wings: WingsStandin, request: web.Request) -> web.Response:
    server = request.match_info["server"]
    wings._known(request)
    life = wings.lifecycle
    if wings.flavour == PELICAN and life.remove_backups_on_server_delete and life.backup_dir:
        await asyncio.to_thread(shutil.rmtree, life.backup_dir / server, True)
    del wings.servers[server]
    life.transferring.discard(server)
    return web.Response(status=204)


async def _transfer_out(wings: WingsStandin, request: web.Request) -> web.Response:
    server = request.match_info["server"]
    wings._known(request)
    try:
        data = json.loads(await request.read())
        url, token = data["url"], data["token"]
        backups = [str(b) for b in data.get("backups") or []]
    except (ValueError, KeyError, TypeError):
        return _error(400, "Failed to parse the request body.")
    life = wings.lifecycle
    if server in life.transferring:
        return _error(409, "A transfer is already in progress for this server.")
    life.transferring.add(server)
    task = asyncio.create_task(_push(wings, server, url, token, backups))
    wings._tasks.add(task)  # cancelled when the stand-in stops
    task.add_done_callback(wings._tasks.discard)
    return web.Response(status=202)


async def _push(wings: WingsStandin, server: str, url: str, token: str, backups: list[str]) -> None:
    life = wings.lifecycle
    try:
        archive = await asyncio.to_thread(_tar_gz, wings.root / server)
        form = aiohttp.MultipartWriter("form-data")
        _add_file(form, "archive", "archive.tar.gz", archive)
        digest = hashlib.sha256(archive).hexdigest()
        _add_field(form, "checksum_archive" if wings.flavour == PELICAN else "checksum", digest)
        if wings.flavour == PELICAN and backups and life.backup_dir is not None:
            folder = life.backup_dir / server
            for name in sorted(p.name for p in folder.glob("*.tar.gz")) if folder.is_dir() else []:
                if name.removesuffix(".tar.gz") not in backups:
                    continue
                data = (folder / name).read_bytes()
                _add_file(form, f"backup_{name}", name, data)
                _add_field(form, f"checksum_backup_{name}", hashlib.sha256(data).hexdigest())
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=form, headers={"Authorization": token}) as r,
        ):
            answer = await r.text()
            life.pushes[server] = "success" if r.status == 200 else f"{r.status} {answer}"
    except Exception as exc:
        life.pushes[server] = f"failure: {exc!r}"
    finally:
        if life.pushes.get(server) != "success":
            life.transferring.discard(server)  # notifyPanelOfFailure


def _tar_gz(root: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return out.getvalue()


def _extract(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def _add_file(form: aiohttp.MultipartWriter, name: str, filename: str, data: bytes) -> None:
    part = form.append(data, {"Content-Type": "application/octet-stream"})
    part.set_content_disposition("form-data", name=name, filename=filename)


def _add_field(form: aiohttp.MultipartWriter, name: str, value: str) -> None:
    part = form.append(value, {"Content-Type": "text/plain"})
    part.set_content_disposition("form-data", name=name)
