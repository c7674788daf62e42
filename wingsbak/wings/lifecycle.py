"""A server's deletion and transfers, where they touch its backups (in front of Wings only).

Deletion (``DELETE /api/servers/{s}``, Wings' route, passed through). Pelican Wings removes
``<backup_directory>/<s>`` with the server unless its ``system.backups.
remove_backups_on_server_delete`` is false (pelican-dev/wings ``router/router_server.go``
deleteServer, ``server/server.go`` RemoveAllServerBackups; default true, ``config/config.go``);
Pterodactyl Wings never removes backups (pterodactyl/wings ``router/router_server.go``). So the
server's backups in the node's bucket and restic repository are removed exactly when Wings
removes its local ones: only once Wings has answered the DELETE with success, and never for a
server whose outgoing transfer Wings accepted before (the panel then lists its backups on the
new node: pelican-dev/panel ``ServerTransferController::success`` deletes the server from the
old node afterwards). Local archives are Wings' to remove; wingsbak's earlier
``<s>/<earlier>`` go with Pelican's folder, and Pterodactyl's flat ones stay (with
their record), as Pterodactyl Wings' own do.

Durable in ``<backup_directory>/.wingsbak-servers.json``: a removal is noted as *asked* before
the DELETE goes to Wings and *confirmed* once Wings answered it; a confirmed one is carried
out (retried while a store does not answer, and at every start) until done, and an asked one
whose answer never came (a kill, Wings gone mid-request) is settled by asking Wings whether
it still has the server. An outgoing transfer is noted before its request goes to Wings and
dropped only when Wings refuses it, when the server is deleted, when it comes back (an
incoming transfer of it) or when a backup of it is accepted here (the panel takes none
during a transfer, so the transfer failed). ``<archive>`` and ``<earlier>`` are Wings' and
wingsbak's earlier name of a backup's archive (:mod:`wingsbak.archive.codecs`).

Outgoing transfer (``POST /api/servers/{s}/transfer``): Pelican Wings streams only
``<backup_directory>/<s>/<archive>`` to the new node (``server/transfer/archive.go``
StreamBackups), so the server's archives still under wingsbak's earlier name are given Wings'
name first. Incoming transfer (``POST /api/transfers``): Pelican Wings writes the backups it
receives to ``<backup_directory>/<s>/<archive>`` (``router/router_transfer.go``), where
wingsbak finds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import yaml
from aiohttp import web

from wingsbak import failpoint
from wingsbak.answers import check_bearer
from wingsbak.appkeys import CONFIG
from wingsbak.archive.codecs import GZIP
from wingsbak.config import PELICAN, PTERODACTYL, Config
from wingsbak.jobs import JobManager
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.storage.base import StoreError
from wingsbak.storage.select import Stores
from wingsbak.uuids import is_uuid
from wingsbak.wings.client import WingsClient, WingsError
from wingsbak.wings.flavour import WingsFlavour
from wingsbak.wings.proxy import WingsAnswer, forward

log = get_logger(__name__)

STATE_NAME = ".wingsbak-servers.json"
ASKED = "asked"  # the DELETE went to Wings; its answer is not known yet
CONFIRMED = "confirmed"  # Wings deleted the server: its stored backups go
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
# How often a removal waiting for a running backup of its server looks again.
JOB_POLL = 0.5


class ServerLifecycle:
    def __init__(
        self,
        config: Config,
        jobs: JobManager,
        wings: WingsClient,
        flavour: WingsFlavour,
        directory: BackupDirectory,
        stores: Stores,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.directory = directory
        self.stores = stores
        self.wings = wings
        self.flavour = flavour
        self.path = config.backup_dir / STATE_NAME
        self.transferred: dict[str, float] = {}  # outgoing transfers: server -> when
        self.removals: dict[str, str] = {}  # server -> ASKED | CONFIRMED
        self.retry_first = RETRY_FIRST
        self._save_lock = asyncio.Lock()
        self._settling: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    # -- the state file ------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("server_state_unreadable", path=str(self.path), error=str(exc))
            return
        if not isinstance(data, dict):
            return
        transferred = data.get("transferred_out")
        removals = data.get("removals")
        if isinstance(transferred, dict):
            self.transferred = {
                k: float(v) for k, v in transferred.items() if is_uuid(k) and _number(v)
            }
        if isinstance(removals, dict):
            self.removals = {
                k: v for k, v in removals.items() if is_uuid(k) and v in (ASKED, CONFIRMED)
            }

    async def _save(self) -> None:
        """On disk when it returns. One that cannot be written (a full disk) is logged and
        kept in memory: a deletion or a transfer is never held up for it, and the next
        change writes it whole."""
        try:
            await self._write()
        except OSError as exc:
            log.error("server_state_not_saved", path=str(self.path), error=str(exc))

    async def _write(self) -> None:
        async with self._save_lock:
            data = {"transferred_out": dict(self.transferred), "removals": dict(self.removals)}
            if not self.transferred and not self.removals:
                await asyncio.to_thread(self.path.unlink, missing_ok=True)
                return
            await asyncio.to_thread(write_json_atomic, self.path, data)

    # -- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        for server, state in list(self.removals.items()):
            log.warning("server_backups_removal_resumed", server=server, state=state)
            self._settle_later(server)

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._settling.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- routes --------------------------------------------------------------------------------

    def _node_request(self, request: web.Request) -> str | None:
        """The server of a request made with the node token; None for any other request,
        which goes to Wings untouched (Wings refuses it)."""
        server = request.match_info["server"]
        if not is_uuid(server):
            return None
        try:
            check_bearer(request, request.app[CONFIG].token)
        except Exception:
            return None
        return server

    async def delete_server(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /api/servers/{server}``."""
        server = self._node_request(request)
        if server is None:
            return await forward(request)
        transferred = server in self.transferred
        noted = (
            not transferred
            and server not in self.removals
            and self._has_stores()
            and self.flavour.known != PTERODACTYL
            and await self._wings_removes_backups()
        )
        if noted:
            self.removals[server] = ASKED
            await self._save()
        try:
            response = await forward(request)
        except BaseException:
            if server in self.removals:
                # Whether Wings deleted it is Wings' to say, once it is done with the request.
                self._settle_later(server, wait=self.retry_first)
            raise
        answered = isinstance(response, WingsAnswer)
        if answered and 200 <= response.status < 300:
            failpoint.hit("server-delete-answered")
            await self._deleted(server, transferred)
        elif server in self.removals:
            if answered and response.status == 404 and not noted:
                # An earlier DELETE whose answer was lost (the panel asks again): Wings no
                # longer has the server, so that one deleted it.
                await self._deleted(server, transferred)
            elif answered and noted:
                del self.removals[server]
                await self._save()
            else:
                self._settle_later(server, wait=self.retry_first)
        return response

    async def _deleted(self, server: str, transferred: bool) -> None:
        """Wings deleted the server (its answer, just observed, also says which Wings)."""
        if server in self.removals and self.flavour.known == PELICAN and not transferred:
            self.removals[server] = CONFIRMED
            await self._save()
            log.info("server_deleted", server=server, stored_backups="removing")
            failpoint.hit("server-delete-confirmed")
            self._settle_later(server)
            return
        if transferred:
            reason = "the server was transferred to another node"
        elif not self._has_stores():
            reason = "no node bucket or restic repository"
        else:
            reason = "Wings keeps the server's backups"
        log.info("server_deleted", server=server, stored_backups="kept", reason=reason)
        if transferred or server in self.removals:
            self.transferred.pop(server, None)
            self.removals.pop(server, None)
            await self._save()

    async def transfer_out(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/servers/{server}/transfer``: the panel starts moving the server away."""
        server = self._node_request(request)
        if server is None:
            return await forward(request)
        if (self.flavour.known or await self.flavour.ask()) == PELICAN:
            renamed = await asyncio.to_thread(self.directory.rename_to_wings_names, server)
            if renamed:
                log.info("backups_renamed_for_transfer", server=server, archives=renamed)
        new = server not in self.transferred
        self.transferred[server] = time.time()
        await self._save()
        response = await forward(request)
        if isinstance(response, WingsAnswer):
            if 200 <= response.status < 300:
                log.info("server_transfer_started", server=server)
            elif new:
                self.transferred.pop(server, None)
                await self._save()
        return response

    async def transfer_in(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/transfers``: another node sends a server here (its bearer is the
        panel's JWT for this node, not the node token: Wings checks it)."""
        response = await forward(request)
        if not (isinstance(response, WingsAnswer) and 200 <= response.status < 300):
            return response
        server = _transfer_subject(request, request.app[CONFIG].token)
        if server is None:
            return response
        folder = self.directory.server_dir(server)
        archives = await asyncio.to_thread(_count_archives, folder)
        log.info("server_transfer_received", server=server, local_backups=archives)
        await self.server_here(server)
        return response

    async def server_here(self, server: str) -> None:
        """The server lives on this node again (an incoming transfer of it, or a backup of it
        accepted here): an outgoing transfer noted earlier did not move it away."""
        if self.transferred.pop(server, None) is not None:
            log.info("server_transfer_forgotten", server=server)
            await self._save()

    # -- removal -------------------------------------------------------------------------------

    def _has_stores(self) -> bool:
        return self.stores.outlive_servers()

    async def _wings_removes_backups(self) -> bool:
        """Pelican's ``system.backups.remove_backups_on_server_delete``, read from Wings' file
        (``wings_config``) now; Wings' default (true) without one. A file that cannot be read
        keeps the backups."""
        path = self.config.wings_config
        if not path:
            return True
        try:
            raw = await asyncio.to_thread(_read_yaml, Path(path))
        except (OSError, yaml.YAMLError) as exc:
            log.error("wings_config_unreadable", path=path, error=str(exc), stored_backups="kept")
            return False
        value = _get(raw, "system", "backups", "remove_backups_on_server_delete")
        if value is None:
            return True
        if not isinstance(value, bool):
            log.error("wings_config_unreadable", path=path, key="remove_backups_on_server_delete")
            return False
        return value

    def _settle_later(self, server: str, wait: float = 0.0) -> None:
        if self._stopping or server in self._settling:
            return
        task = asyncio.create_task(self._settle(server, wait), name=f"server-removal-{server}")
        self._settling[server] = task
        task.add_done_callback(lambda _t: self._settling.pop(server, None))

    async def _settle(self, server: str, wait: float) -> None:
        """Carry out (or drop) the server's noted removal, trying again at growing intervals
        while Wings or a store does not answer."""
        await asyncio.sleep(wait)
        delay = self.retry_first
        while server in self.removals:
            try:
                if self.removals[server] == ASKED:
                    await self._ask_wings(server)
                if self.removals.get(server) == CONFIRMED:
                    await self._remove_stored(server)
                    del self.removals[server]
                    await self._save()
                return
            except (WingsError, StoreError) as exc:
                log.warning(
                    "server_backups_removal_retry", server=server, error=str(exc), retry_in=delay
                )
            except Exception as exc:
                log.error(
                    "server_backups_removal_retry",
                    server=server,
                    error=str(exc),
                    retry_in=delay,
                    exc_info=True,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _ask_wings(self, server: str) -> None:
        """An asked removal whose answer never came: Wings deleted the server when it no
        longer has it."""
        if await self.wings.knows_server(server):
            log.info("server_delete_not_done", server=server, stored_backups="kept")
            del self.removals[server]
        elif self.flavour.known == PELICAN:
            self.removals[server] = CONFIRMED
        else:
            del self.removals[server]
        await self._save()

    async def _remove_stored(self, server: str) -> None:
        # A backup of the server still running would land after the listing.
        while self.jobs.is_backing_up(server):
            await asyncio.sleep(JOB_POLL)
        removed = await asyncio.to_thread(self.stores.remove_server, server)
        log.info("server_backups_removed", server=server, **removed)


LIFECYCLE = web.AppKey("server_lifecycle", ServerLifecycle)


def add_routes(app: web.Application, lifecycle: ServerLifecycle) -> None:
    """Before proxy.add_routes' catch-all. Named ``wings-*``: Wings checks their bearer."""
    app[LIFECYCLE] = lifecycle
    app.router.add_delete("/api/servers/{server}", lifecycle.delete_server, name="wings-delete")
    app.router.add_post(
        "/api/servers/{server}/transfer", lifecycle.transfer_out, name="wings-transfer-outgoing"
    )
    app.router.add_post("/api/transfers", lifecycle.transfer_in, name="wings-transfer-incoming")


async def server_here(app: web.Application, server: str) -> None:
    """See :meth:`ServerLifecycle.server_here` (nothing standalone)."""
    lifecycle = app.get(LIFECYCLE)
    if lifecycle is not None:
        await lifecycle.server_here(server)


def _transfer_subject(request: web.Request, token: str) -> str | None:
    """The server an incoming transfer's JWT names (``sub``), its signature checked."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer":
        return None
    with contextlib.suppress(jwt.InvalidTokenError):
        claims = jwt.decode(
            credentials.strip(),
            token,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False},
        )
        subject = claims.get("sub")
        return subject if is_uuid(subject) else None
    return None


def _count_archives(folder: Path) -> int:
    try:
        return sum(1 for name in os.listdir(folder) if name.endswith(GZIP.suffix))
    except OSError:
        return 0


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _get(raw: Any, *keys: str) -> Any:
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
