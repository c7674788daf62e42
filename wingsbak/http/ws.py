"""GET /api/servers/{server}/ws: Wings' event socket, for the backup events.

The client authenticates inside the socket with a panel-signed JWT
(``{"event": "auth", "args": [jwt]}``) and may re-authenticate with a fresh token before the
old one expires, as the panel's console does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from wingsbak.errors import TokenRejected
from wingsbak.events import BACKUP_COMPLETED, BACKUP_PROGRESS, BACKUP_RESTORE_COMPLETED, Event
from wingsbak.http.state import CONFIG, EVENTS
from wingsbak.http.validation import path_uuid, server_root_or_404
from wingsbak.log import get_logger
from wingsbak.tokens import decode_token

log = get_logger(__name__)
routes = web.RouteTableDef()

EXPIRY_WARNING_SECONDS = 60
_BACKUP_EVENTS = {BACKUP_COMPLETED, BACKUP_PROGRESS, BACKUP_RESTORE_COMPLETED}


class _Session:
    def __init__(self, ws: web.WebSocketResponse, server: str, key: str) -> None:
        self.ws = ws
        self.server = server
        self.key = key
        self.claims: dict[str, Any] | None = None
        self.warned = False

    @property
    def permissions(self) -> set[str]:
        perms = (self.claims or {}).get("permissions") or []
        return {p for p in perms if isinstance(p, str)}

    def may_receive(self, event: Event) -> bool:
        if self.claims is None:
            return False
        # "backup completed:<uuid>" is the per-backup form the stock panel listens to.
        if event.name.split(":", 1)[0] in _BACKUP_EVENTS:
            return bool(self.permissions & {"backup.read", "*"})
        return True

    async def send(self, name: str, *args: str) -> None:
        await self.ws.send_str(json.dumps({"event": name, "args": list(args)}))

    async def authenticate(self, token: str) -> None:
        try:
            claims = decode_token(token, self.key, ["server_uuid", "user_uuid"])
            if claims["server_uuid"] != self.server:
                raise TokenRejected("the token is for another server")
            perms = claims.get("permissions")
            if not isinstance(perms, list) or not (
                {"websocket.connect", "*"} & {p for p in perms if isinstance(p, str)}
            ):
                raise TokenRejected("the token does not grant websocket.connect")
        except TokenRejected as exc:
            await self.send("jwt error", exc.message)
            return
        self.claims = claims
        self.warned = False
        await self.send("auth success")

    async def watch_expiry(self) -> None:
        while not self.ws.closed:
            await asyncio.sleep(1.0)
            if self.claims is None:
                continue
            left = float(self.claims["exp"]) - time.time()
            if left <= 0:
                await self.send("token expired")
                await self.ws.close()
                return
            if left <= EXPIRY_WARNING_SECONDS and not self.warned:
                self.warned = True
                await self.send("token expiring")

    async def require_auth(self, seconds: float) -> None:
        """Close the socket unless a token was accepted within ``seconds`` of its opening."""
        await asyncio.sleep(seconds)
        if self.claims is None and not self.ws.closed:
            log.info("websocket_auth_timeout", server=self.server, seconds=seconds)
            reason = f"no successful auth within {seconds:g} s"
            await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode())

    async def forward(self, queue: asyncio.Queue[Event]) -> None:
        while not self.ws.closed:
            event = await queue.get()
            if self.may_receive(event):
                await self.ws.send_str(event.to_json())


def parse_message(text: str) -> tuple[str, list[str]] | None:
    """``(event, args)`` of a client message ``{"event": name, "args": [string, ...]}``; None
    for anything that is not such an object. Args that are no list of strings (Wings' Go
    decoder refuses those) come back as ``[]``, so an ``auth`` with them fails like an
    ``auth`` without a token; absent or null args are ``[]`` too."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return None
    args = data.get("args")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        args = []
    return data["event"], args


@routes.get("/api/servers/{server}/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    server = path_uuid(request, "server", "server")
    await server_root_or_404(request, server)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
    await ws.prepare(request)
    session = _Session(ws, server, request.app[CONFIG].token)
    bus = request.app[EVENTS]
    queue = bus.subscribe(server)
    tasks = [
        asyncio.create_task(session.forward(queue)),
        asyncio.create_task(session.watch_expiry()),
        asyncio.create_task(session.require_auth(request.app[CONFIG].api.websocket_auth_timeout)),
    ]
    try:
        async for msg in ws:
            message = parse_message(msg.data) if msg.type == WSMsgType.TEXT else None
            if message is None:
                continue
            name, args = message
            if name == "auth":  # no token, or args that are no list of strings: a jwt error
                await session.authenticate(args[0] if args else "")
    finally:
        bus.unsubscribe(server, queue)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return ws
