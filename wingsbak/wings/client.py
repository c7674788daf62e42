"""The client of Wings' own API on this node (bearer: the node token): a server's state and
details, power actions and console commands, and what restores do with them: stop a live
server first (backups pause its saving with them: :mod:`wingsbak.wings.quiesce`).

Routes and answers are pterodactyl/wings ``router/router.go``: ``GET /api/servers/{s}`` ->
``{"state": ..., "is_suspended": ...}``, ``POST .../power`` -> 202, ``POST .../commands`` ->
204 (502 when the server is not running).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from wingsbak.errors import ServiceFailure
from wingsbak.log import get_logger

log = get_logger(__name__)

OFFLINE = "offline"
RUNNING = "running"
# One call to Wings' API: it answers at once (power actions run in the background there).
CALL_TIMEOUT = aiohttp.ClientTimeout(total=15.0)
# What an answer streamed through to a client may gather before it is sent on.
PASS_THROUGH_BUFFER = 1024 * 1024


class WingsError(ServiceFailure):
    """Wings could not be reached, or did not answer as its API does."""


class WingsClient:
    def __init__(self, base_url: str, token: str, ca_file: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.ca_file = ca_file
        # How often a restore asks whether a stopping server is offline yet.
        self.poll_interval = 0.5
        # Called when Wings refuses ``token`` (403): True when another token is in ``token``
        # now and the call may be made again (wingsbak.wings.identity: Wings restarted with
        # the node's new token).
        self.on_refused: Callable[[], Awaitable[bool]] | None = None
        # Told of every answer of Wings, passed through or to wingsbak's own calls (method,
        # path, headers): how wingsbak learns which Wings this is (wingsbak.wings.flavour).
        self.on_answer: Callable[[str, str, Mapping[str, str]], None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """One connection pool to Wings, shared with the pass-through (no total timeout:
        proxied transfers run for hours; the pass-through sets its own connect timeout)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ssl=self.ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
                auto_decompress=False,
                read_bufsize=PASS_THROUGH_BUFFER,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.base_url.startswith("https://"):
            return None
        # Verifying, always: the node's certificate, or the CA bundle named in the config.
        return ssl.create_default_context(cafile=self.ca_file or None)

    def url(self, path_qs: str) -> str:
        return self.base_url + path_qs

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def note_answer(self, method: str, path: str, headers: Mapping[str, str]) -> None:
        if self.on_answer is not None:
            self.on_answer(method, path, headers)

    async def ping(self) -> int:
        """``GET /api/system`` with the bearer: Wings' status (any answer, 401 and 403
        included, tells which Wings answered)."""
        status, _ = await self._call("GET", "/api/system")
        return status

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, data = await self._call_once(method, path, body)
        if status == 403 and self.on_refused is not None and await self.on_refused():
            status, data = await self._call_once(method, path, body)
        return status, data

    async def _call_once(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        try:
            async with self.session.request(
                method, self.url(path), json=body, headers=headers, timeout=CALL_TIMEOUT
            ) as r:
                self.note_answer(method, path, r.headers)
                data = await r.json(content_type=None) if r.status != 204 else None
                return r.status, data
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise WingsError(f"Wings could not be reached at {self.base_url}: {exc!r}") from exc

    async def server_details(self, server: str) -> dict[str, Any]:
        """``GET /api/servers/{s}`` whole (server/server.go, ``APIResponse``): ``state``,
        ``utilization``, ``configuration`` (``invocation``, ``container.image``, ...)."""
        status, data = await self._call("GET", f"/api/servers/{server}")
        if status != 200 or not isinstance(data, dict):
            raise WingsError(f"Wings answered {status} for the details of server {server}")
        return data

    async def server_state(self, server: str) -> str:
        status, data = await self._call("GET", f"/api/servers/{server}")
        state = data.get("state") if isinstance(data, dict) else None
        if status != 200 or not isinstance(state, str):
            raise WingsError(f"Wings answered {status} for the state of server {server}")
        return state

    async def knows_server(self, server: str) -> bool:
        """Whether Wings has this server (200) or not (404); WingsError for anything else."""
        status, _ = await self._call("GET", f"/api/servers/{server}")
        if status not in (200, 404):
            raise WingsError(f"Wings answered {status} for server {server}")
        return status == 200

    async def power(self, server: str, action: str) -> None:
        status, _ = await self._call(
            "POST", f"/api/servers/{server}/power", {"action": action, "wait_seconds": 30}
        )
        if status != 202:
            raise WingsError(f"Wings answered {status} to power {action} for server {server}")

    async def send_commands(self, server: str, commands: list[str]) -> None:
        status, data = await self._call(
            "POST", f"/api/servers/{server}/commands", {"commands": commands}
        )
        if status != 204:
            error = data.get("error") if isinstance(data, dict) else None
            raise WingsError(f"Wings answered {status} to console commands: {error or data}")

    async def stop_and_wait(self, server: str, timeout: float) -> None:
        """Wings' own order before a restore (server/backup.go, RestoreBackup): a server that
        is not offline is stopped, and the restore waits until Wings says it is offline.
        Raises :class:`WingsError` when Wings cannot say so within ``timeout`` seconds."""
        state = await self.server_state(server)
        if state == OFFLINE:
            return
        log.info("restore_stopping_server", server=server, state=state)
        await self.power(server, "stop")
        deadline = time.monotonic() + timeout
        while True:
            await asyncio.sleep(self.poll_interval)
            state = await self.server_state(server)
            if state == OFFLINE:
                log.info("restore_server_stopped", server=server)
                return
            if time.monotonic() >= deadline:
                raise WingsError(
                    f"server {server} is still {state} after {timeout:g} s "
                    "(system.backups.restore_stop_timeout); nothing restored"
                )


WINGS = web.AppKey("wings", WingsClient)  # only in front of Wings (api.upstream)
