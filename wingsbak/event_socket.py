"""Wings' event socket protocol, shared by wingsbak's own socket (standalone,
:mod:`wingsbak.http.events_ws`) and the console socket relayed to Wings
(:mod:`wingsbak.wings.relay`): the panel-signed JWT a client authenticates with inside the
socket (``{"event": "auth", "args": [jwt]}``, again with a fresh token before the old one
expires, as the panel's console does), Wings' texts for a token refused, and which backup
events the token lets through. Matched against pterodactyl/wings f1c5bbd and pelican-dev/wings
090841d (router/websocket/websocket.go, listeners.go).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import WSCloseCode, web

from wingsbak.errors import TokenRejected
from wingsbak.events import BACKUP_COMPLETED, BACKUP_PROGRESS, Event, EventBus
from wingsbak.log import get_logger
from wingsbak.tokens import EXPIRED, decode_token, has_scope

log = get_logger(__name__)

EXPIRY_WARNING_SECONDS = 60
# Wings looks at the token's expiry every 30 s (router/websocket/listeners.go); so often, at
# most, does a client hear "token expiring" (or, once expired, the jwt error) from here.
NOTICE_INTERVAL_SECONDS = 30.0
WATCH_INTERVAL_SECONDS = 1.0
# Wings' texts (router/websocket/websocket.go): the panel's console matches the first two
# ("exp claim is invalid", "(denylist)") to fetch a new token without bothering the user.
NO_JWT = "jwt: no jwt present"
DENYLISTED = "jwt: created too far in past (denylist)"
NO_CONNECT = "jwt: missing connect permission"
UUID_MISMATCH = "jwt: server uuid mismatch"
# "backup completed" and its per-uuid form need backup.read, as in Wings (a prefix match);
# "backup progress" is wingsbak's own and tells as much about the server's backups.
_NEEDS_BACKUP_READ = (BACKUP_COMPLETED, BACKUP_PROGRESS)


def grants(claims: dict[str, Any], permission: str) -> bool:
    """Wings' ``HasPermission``: the permission itself, or ``*`` for any not ``admin...``."""
    perms = claims.get("permissions")
    if not isinstance(perms, list):
        return False
    return permission in perms or ("*" in perms and not permission.startswith("admin"))


def verify_socket_token(token: str, key: str, server: str) -> dict[str, Any]:
    """The claims of a websocket JWT for ``server`` that grants ``websocket.connect``, or
    :class:`TokenRejected` saying why not."""
    claims = decode_token(token, key, ["server_uuid", "user_uuid"])
    if claims.get("iat") is None:
        raise TokenRejected(DENYLISTED)  # Wings cannot place a token without iat
    if not grants(claims, "websocket.connect") or not has_scope(claims, "websocket"):
        raise TokenRejected(NO_CONNECT)
    if claims["server_uuid"] != server:
        raise TokenRejected(UUID_MISMATCH)
    return claims


class EventSession:
    """One client socket and the token it authenticated with: which backup events it gets."""

    def __init__(self, ws: web.WebSocketResponse, server: str, key: str) -> None:
        self.ws = ws
        self.server = server
        self.key = key
        self.claims: dict[str, Any] | None = None
        # An auth succeeded on this socket (in front of Wings: Wings answered ``auth success``),
        # whatever wingsbak thinks of its token.
        self.authenticated = False
        self.next_notice = 0.0  # monotonic time before which no expiry notice is repeated

    def token_error(self) -> str | None:
        """Wings' ``TokenValid``: why the socket's token no longer lets events through."""
        if self.claims is None:
            return NO_JWT
        if int(time.time()) > self.claims["exp"]:
            return EXPIRED
        return None

    def may_receive(self, event: Event) -> bool:
        assert self.claims is not None
        if event.name.startswith(_NEEDS_BACKUP_READ):
            return grants(self.claims, "backup.read")
        return True

    async def send(self, name: str, *args: str) -> None:
        await self.ws.send_str(json.dumps({"event": name, "args": list(args)}))

    async def authenticate(self, token: str) -> None:
        """A failed ``auth`` keeps the token the socket had (Wings does the same), so a
        client whose refresh failed is told, not cut off."""
        try:
            claims = verify_socket_token(token, self.key, self.server)
        except TokenRejected as exc:
            await self.send("jwt error", exc.message)
            return
        self.claims = claims
        self.authenticated = True
        self.next_notice = 0.0
        await self.send("auth success")

    async def refuse_if_invalid(self) -> bool:
        """Wings' answer to any message but ``auth`` on a socket without a valid token."""
        error = self.token_error()
        if error is not None:
            await self.send("jwt error", error)
        return error is not None

    async def watch_expiry(self) -> None:
        """An expired token does not close the socket (Sockette would not reconnect after a
        normal close): the client is told, and it authenticates again with a fresh token."""
        while not self.ws.closed:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            if self.claims is None or time.monotonic() < self.next_notice:
                continue
            left = self.claims["exp"] - int(time.time())
            if left < 0:
                await self.send("jwt error", EXPIRED)
            elif left <= EXPIRY_WARNING_SECONDS:
                await self.send("token expiring")
            else:
                continue
            self.next_notice = time.monotonic() + NOTICE_INTERVAL_SECONDS

    async def require_auth(self, seconds: float) -> None:
        """Close the socket unless a token was accepted within ``seconds`` of its opening."""
        await asyncio.sleep(seconds)
        if not self.authenticated and not self.ws.closed:
            log.info("websocket_auth_timeout", server=self.server, seconds=seconds)
            reason = f"no successful auth within {seconds:g} s"
            await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode())

    async def forward(self, queue: asyncio.Queue[Event]) -> None:
        while not self.ws.closed:
            event = await queue.get()
            if self.claims is None:
                continue  # Wings starts listening only once the socket has authenticated
            error = self.token_error()
            if error is not None:
                await self.send("jwt error", error)  # Wings' SendJson sends this instead
            elif self.may_receive(event):
                await self.ws.send_str(event.to_json())


@contextlib.asynccontextmanager
async def joined_events(
    bus: EventBus, session: EventSession, *also: Coroutine[Any, Any, None]
) -> AsyncIterator[None]:
    """While inside, the backup events of the session's server flow to its socket (as far
    as its token allows) and ``also`` runs beside them; both end on the way out."""
    queue = bus.subscribe(session.server)
    tasks = [asyncio.create_task(session.forward(queue)), *map(asyncio.create_task, also)]
    try:
        yield
    finally:
        bus.unsubscribe(session.server, queue)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
