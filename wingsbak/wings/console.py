"""A server's console as Wings publishes it, read to know when the game has saved.

Wings' websocket ``/api/servers/{s}/ws`` (pterodactyl/wings ``router/router_server_ws.go``,
``router/websocket/websocket.go``): the upgrade is refused unless ``Origin`` is the panel's URL
(``remote``) or in ``allowed_origins`` (``CheckOrigin``); the first message is ``auth`` with a
JWT signed by the node token, answered by ``auth success``; from then on every console line
arrives as ``{"event": "console output", "args": [line]}``. wingsbak signs that token itself,
with the claims the panel's ``NodeJWTService`` puts in a console token (and Pelican's
``scope``), holding only ``websocket.connect``: it reads, it never sends commands this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import jwt

from wingsbak.archive.ratelimit import Cancelled
from wingsbak.log import get_logger
from wingsbak.patterns import Pattern, matches

log = get_logger(__name__)

# Opening the socket and Wings' ``auth success``: Wings answers both at once.
OPEN_TIMEOUT = 10.0
# Larger than any console line Wings sends (it splits the container's output by line).
MAX_MESSAGE = 4 * 1024 * 1024
# The token outlives the longest wait by this much; Wings only checks ``exp``.
TOKEN_MARGIN = 120
# How often a wait looks at the job's cancel event (a threading.Event, set at shutdown).
CANCEL_POLL = 0.25
# The panel backdates ``nbf`` by five minutes (NodeJWTService), for clocks that disagree.
NOT_BEFORE_SLACK = 300


class ConsoleUnavailable(Exception):
    """The console could not be opened or read: Wings refused it, or did not answer."""


def console_token(key: str, server: str, issuer: str, lifetime: float) -> str:
    """A console token as the panel signs one (HS256 with the node token). Its ``jti`` and
    ``user_uuid`` are wingsbak's own, so that the panel denying a user's tokens never denies
    this one (Wings' denylists key on them; Pelican refuses a token without a user)."""
    now = int(time.time())
    user = str(uuid.uuid5(uuid.NAMESPACE_URL, f"wingsbak:{server}"))
    jti = hashlib.md5(f"wingsbak{server}".encode()).hexdigest()
    claims = {
        "iss": issuer,
        "jti": jti,
        "iat": now,
        "nbf": now - NOT_BEFORE_SLACK,
        "exp": now + int(lifetime) + TOKEN_MARGIN,
        "server_uuid": server,
        "permissions": ["websocket.connect"],
        "user_uuid": user,
        "scope": "websocket",  # Pelican Wings' check; Pterodactyl's ignores it
        "unique_id": secrets.token_hex(8),
    }
    return jwt.encode(claims, key, algorithm="HS256", headers={"jti": jti})


class ConsoleWatch:
    """An authenticated console socket and the lines read from it since :meth:`arm`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, server: str) -> None:
        self.ws = ws
        self.server = server
        self._armed = False
        self._lines: list[str] = []
        self._changed = asyncio.Event()
        self._closed = False
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"console-{self.server}")

    def arm(self) -> None:
        """From now on lines count (one printed before the commands went is an old save's)."""
        self._lines.clear()
        self._armed = True

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event, args = _message(msg.data)
                if event == "console output" and self._armed:
                    self._lines.extend(args)
                    self._changed.set()
                elif event in ("jwt error", "token expired"):
                    log.warning("console_token_refused", server=self.server, error=args)
                    break
        finally:
            self._closed = True
            self._changed.set()

    async def wait_for(
        self, pattern: Pattern, timeout: float, cancel: threading.Event | None = None
    ) -> bool:
        """Whether a line matching ``pattern`` arrived (since :meth:`arm`) within
        ``timeout`` seconds; False also when the socket closed first. Raises
        :class:`Cancelled` soon after ``cancel`` is set (a shutdown)."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            lines, seen = self._lines[seen:], len(self._lines)
            if any(matches(pattern, line) for line in lines):
                return True
            if self._closed:
                log.warning("console_closed_while_waiting", server=self.server)
                return False
            if cancel is not None and cancel.is_set():
                raise Cancelled("backup cancelled")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, CANCEL_POLL))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _message(text: str) -> tuple[str, list[str]]:
    try:
        data = json.loads(text)
    except ValueError:
        return "", []
    if not isinstance(data, dict):
        return "", []
    args = data.get("args")
    lines = [a for a in args if isinstance(a, str)] if isinstance(args, list) else []
    event = data.get("event")
    return (event if isinstance(event, str) else ""), lines


@contextlib.asynccontextmanager
async def open_console(
    session: aiohttp.ClientSession,
    url: str,
    server: str,
    *,
    token: str,
    origin: str,
) -> AsyncIterator[ConsoleWatch]:
    """The server's console at ``url`` (Wings' ``/api/servers/{s}/ws``), authenticated.
    Raises :class:`ConsoleUnavailable` when Wings refuses it or does not answer."""
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            ws = await session.ws_connect(
                url, headers={"Origin": origin}, max_msg_size=MAX_MESSAGE, autoping=True
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise ConsoleUnavailable(
            f"Wings refused the console socket ({exc.status}): its Origin {origin!r} must be "
            "the panel's URL (remote) or in Wings' allowed_origins"
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ConsoleUnavailable(f"the console could not be opened: {exc!r}") from None
    watch = ConsoleWatch(ws, server)
    try:
        await _authenticate(ws, token)
        watch.start()
        yield watch
    finally:
        await watch.close()


async def _authenticate(ws: aiohttp.ClientWebSocketResponse, token: str) -> None:
    """``auth``, then Wings' ``auth success``. Its listeners are registered right after it
    (websocket.go, ``registerListenerEvents``), before the ``status`` it sends next: waiting
    for that too means no line printed after this returns can be missed."""
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            await ws.send_str(json.dumps({"event": "auth", "args": [token]}))
            authed = False
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event, args = _message(msg.data)
                if event == "auth success":
                    authed = True
                elif event == "status" and authed:
                    return
                elif event in ("jwt error", "daemon error"):
                    raise ConsoleUnavailable(f"Wings refused the console token: {args}")
            raise ConsoleUnavailable("Wings closed the console socket during authentication")
    except TimeoutError:
        raise ConsoleUnavailable("Wings did not authenticate the console socket") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ConsoleUnavailable(f"the console socket failed: {exc!r}") from None
