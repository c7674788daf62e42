"""A Wings stand-in: a real aiohttp server answering as pterodactyl/wings ``router/router.go``
does, for the routes wingsbak passes through or calls, recording what it receives.

- ``/api/*`` needs ``Authorization: Bearer <node token>`` (Wings' AuthorizationMiddleware:
  401 without the header, 403 with a wrong token).
- ``GET /api/system``; ``GET /api/servers/{s}`` (``state``, ``is_suspended``, ...; 404 for a
  server it does not know); ``POST .../power`` (422 for an unknown action, 202; ``stop`` makes
  the server ``stopping`` then, after ``stop_delay`` seconds, ``offline``; ``None``: never);
  ``POST .../commands`` (502 when not running, 204).
- ``/api/servers/{s}/files/*``: ``GET files/contents?file=`` streams a file, ``POST
  files/write?file=`` streams the body into one; both record a sha256.
- ``GET /download/file?token=`` and ``POST /upload/file?token=`` (multipart ``files``) with a
  JWT signed by the node token, as Wings' file manager links.
- ``/api/servers/{s}/ws``: ``auth`` -> ``auth success`` then ``status``; ``send command`` ->
  ``console output`` with the command; ``set state`` runs the power action; a binary frame is
  echoed; what arrives (frames, close codes) is recorded.
- At the end, in a section of its own: the console as Wings publishes it to authenticated
  sockets, Wings' ``Origin`` check, the server's image and invocation, and a test game that
  saves as Minecraft does (``start_game``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from daemon_helpers import NODE_TOKEN, free_port

CHUNK = 256 * 1024
POWER_ACTIONS = ("start", "stop", "restart", "kill")


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any = None  # parsed JSON, or {"sha256": ..., "size": ...} for a streamed body


RECORD = web.RequestKey("record", Received)


@dataclass
class ServerState:
    state: str = "offline"
    stop_delay: float | None = 0.2  # seconds from "stopping" to "offline"; None: never
    commands: list[str] = field(default_factory=list)
    image: str = ""  # Wings' configuration.container.image (the console section below)
    invocation: str = ""  # and configuration.invocation


@dataclass
class WingsStandin:
    root: Path
    token: str = NODE_TOKEN
    port: int = field(default_factory=free_port)
    servers: dict[str, ServerState] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    ws_frames: list[tuple[str, Any]] = field(default_factory=list)  # (server, text | bytes)
    ws_closes: list[int | None] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # https, as Wings with api.ssl.enabled
    console: ConsoleHub = field(default_factory=lambda: ConsoleHub())  # the section below
    _runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def server(self, uuid: str, state: str = "offline", **kw: Any) -> ServerState:
        s = self.servers[uuid] = ServerState(state=state, **kw)
        return s

    def received(self, method: str, path: str) -> list[Received]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def power_actions(self, server: str) -> list[str]:
        return [
            r.body.get("action")
            for r in self.received("POST", f"/api/servers/{server}/power")
            if isinstance(r.body, dict)
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        middlewares = [self._record, self._auth, console_origin(self)]
        app = web.Application(middlewares=middlewares, client_max_size=1 << 40)
        r = app.router
        r.add_get("/api/system", self._system)
        r.add_get("/api/servers/{server}", self._get_server)
        r.add_post("/api/servers/{server}/power", self._power)
        r.add_post("/api/servers/{server}/commands", self._commands)
        r.add_get("/api/servers/{server}/files/contents", self._file_contents)
        r.add_post("/api/servers/{server}/files/write", self._file_write)
        r.add_get("/api/servers/{server}/ws", self._websocket)
        r.add_get("/download/file", self._download_file)
        r.add_post("/upload/file", self._upload_file)
        r.add_route("*", "/echo/{tail:.*}", self._echo)
        # Go's net/http hands a handler the body as sent: no decoding of Content-Encoding.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, auto_decompress=False
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.tls
        )
        await site.start()

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close_sockets(self, code: int) -> None:
        for ws in list(self.sockets):
            await ws.close(code=code)

    # -- middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        rec = Received(request.method, request.path, request.query_string, dict(request.headers))
        self.requests.append(rec)
        request[RECORD] = rec
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/") and not request.path.endswith("/ws"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme != "Bearer" or not token:
                return web.json_response(
                    {"error": "The required authorization heads were not present in the request."},
                    status=401,
                )
            if token != self.token:
                return web.json_response(
                    {"error": "You are not authorized to access this endpoint."}, status=403
                )
        return await handler(request)

    # -- API ---------------------------------------------------------------------------------

    def _known(self, request: web.Request) -> ServerState:
        s = self.servers.get(request.match_info["server"])
        if s is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "The requested resource does not exist on this server."}),
                content_type="application/json",
            )
        return s

    async def _json(self, request: web.Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "Failed to parse the request body."}),
                content_type="application/json",
            ) from None
        request[RECORD].body = body
        return body

    async def _system(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "architecture": "amd64",
                "cpu_count": os.cpu_count(),
                "kernel_version": os.uname().release,
                "os": "linux",
                "version": "1.11.13",
            }
        )

    async def _get_server(self, request: web.Request) -> web.Response:
        s = self._known(request)
        return web.json_response(
            {
                "state": s.state,
                "is_suspended": False,
                "utilization": {"memory_bytes": 0, "cpu_absolute": 0, "state": s.state},
                "configuration": {
                    "uuid": request.match_info["server"],
                    "invocation": s.invocation,
                    "container": {"image": s.image},
                },
            }
        )

    def power_action(self, s: ServerState, action: str) -> None:
        if action in ("start", "restart"):
            s.state = "running"
        elif action == "kill":
            s.state = "offline"
        elif action == "stop" and s.state != "offline":
            s.state = "stopping"
            if s.stop_delay is not None:
                task = asyncio.create_task(self._offline_after(s, s.stop_delay))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _offline_after(self, s: ServerState, delay: float) -> None:
        await asyncio.sleep(delay)
        if s.state == "stopping":
            s.state = "offline"

    async def _power(self, request: web.Request) -> web.Response:
        s = self._known(request)
        body = await self._json(request)
        action = body.get("action") if isinstance(body, dict) else None
        if action not in POWER_ACTIONS:
            return web.json_response(
                {
                    "error": "The power action provided was not valid, should be one of "
                    '"stop", "start", "restart", "kill"'
                },
                status=422,
            )
        self.power_action(s, action)
        return web.Response(status=202)

    async def _commands(self, request: web.Request) -> web.Response:
        s = self._known(request)
        if s.state != "running":
            return web.json_response(
                {"error": "Cannot send commands to a stopped server instance."}, status=502
            )
        body = await self._json(request)
        commands = body.get("commands") if isinstance(body, dict) else None
        if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
            return web.json_response({"error": "Failed to parse the request body."}, status=400)
        s.commands.extend(commands)
        self.console.commands(request.match_info["server"], commands)  # the section below
        return web.Response(status=204)

    # -- files -------------------------------------------------------------------------------

    def _file(self, server: str, name: str) -> Path:
        path = (self.root / server / name.lstrip("/")).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise web.HTTPBadRequest()
        return path

    async def _file_contents(self, request: web.Request) -> web.StreamResponse:
        self._known(request)
        path = self._file(request.match_info["server"], request.query["file"])
        return await self._send_file(request, path)

    async def _send_file(self, request: web.Request, path: Path) -> web.StreamResponse:
        if not path.is_file():
            return web.json_response({"error": "The requested resource was not found."}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = path.stat().st_size
        await response.prepare(request)
        with path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def _sink(
        self, request: web.Request, read: Callable[[int], Awaitable[bytes]], path: Path
    ) -> dict[str, Any]:
        digest = hashlib.sha256()
        size = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            while chunk := await read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
        result = {"sha256": digest.hexdigest(), "size": size}
        request[RECORD].body = result
        return result

    async def _file_write(self, request: web.Request) -> web.Response:
        self._known(request)
        path = self._file(request.match_info["server"], request.query["file"])
        await self._sink(request, request.content.read, path)
        return web.Response(status=204)

    def _claims(self, request: web.Request) -> dict[str, Any]:
        try:
            return jwt.decode(request.query.get("token", ""), self.token, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "The provided JWT is not valid."}),
                content_type="application/json",
            ) from None

    async def _download_file(self, request: web.Request) -> web.StreamResponse:
        claims = self._claims(request)
        path = self._file(claims["server_uuid"], claims["file_path"])
        return await self._send_file(request, path)

    async def _upload_file(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        reader = await request.multipart()
        async for part in reader:
            if part.name == "files":
                name = request.query.get("directory", "/") + "/" + (part.filename or "upload")
                await self._sink(request, part.read_chunk, self._file(claims["server_uuid"], name))
        return web.Response(status=200)

    async def _echo(self, request: web.Request) -> web.Response:
        """What the request looked like on arrival (for header and query assertions)."""
        body = await request.read()
        if request.headers.get("X-Echo-Gzip"):
            # An answer compressed as Wings' gzip middleware sends it, body as the client asked.
            packed = gzip.compress(request.headers["X-Echo-Gzip"].encode())
            return web.Response(body=packed, headers={"Content-Encoding": "gzip"})
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "sha256": hashlib.sha256(body).hexdigest(),
            },
            status=int(request.headers.get("X-Echo-Status", "200")),
            headers={
                "X-Echo": "yes",
                "Keep-Alive": "timeout=5",
                "Connection": "keep-alive, X-Drop",
                "X-Drop": "1",
            },
        )

    # -- the websocket -----------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        server = request.match_info["server"]
        s = self._known(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        authed = False
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    self.ws_frames.append((server, msg.data))
                    await ws.send_bytes(msg.data)
                    continue
                if msg.type != WSMsgType.TEXT:
                    continue
                self.ws_frames.append((server, msg.data))
                data = json.loads(msg.data)
                event, args = data.get("event"), data.get("args") or []
                if event == "auth":
                    try:
                        claims = jwt.decode("".join(args), self.token, algorithms=["HS256"])
                    except jwt.InvalidTokenError as exc:
                        await ws.send_json({"event": "jwt error", "args": [str(exc)]})
                        continue
                    if claims.get("server_uuid") != server:
                        mismatch = ["jwt: server uuid mismatch"]
                        await ws.send_json({"event": "jwt error", "args": mismatch})
                        continue
                    first = not authed
                    authed = True
                    await ws.send_json({"event": "auth success", "args": []})
                    if first:
                        self.console.listen(server, ws, claims)  # the section below
                        await ws.send_json({"event": "status", "args": [s.state]})
                elif not authed:
                    await ws.send_json({"event": "jwt error", "args": ["jwt: no jwt present"]})
                elif event == "send command":
                    s.commands.append("".join(args))
                    await ws.send_json({"event": "console output", "args": ["".join(args)]})
                elif event == "set state":
                    self.power_action(s, "".join(args))
                    await ws.send_json({"event": "status", "args": [s.state]})
        finally:
            self.sockets.remove(ws)
            self.ws_closes.append(ws.close_code)
        return ws


# == The console as Wings publishes it, its Origin check, and a test game =====================
#
# Kept apart from the rest of the stand-in (hooked in by one line each in ``start``,
# ``_websocket``, ``_commands`` and ``_get_server``). ``WingsStandin.console`` holds it.
#
# - Origin (router/websocket/websocket.go, ``GetHandler``'s ``CheckOrigin``): with ``remote``
#   set, an upgrade of ``/api/servers/{s}/ws`` whose ``Origin`` is neither the panel's URL
#   (Wings' ``remote``) nor in ``allowed_origins`` (``"*"``: any) is refused with 403, as
#   gorilla/websocket's ``Upgrader`` answers a failed ``CheckOrigin``. ``remote`` None: not
#   checked (the relay's tests).
# - Console output (router/websocket/listeners.go, ``listenForServerEvents``): once a socket
#   is authenticated, every line the server's process prints reaches it as ``{"event":
#   "console output", "args": [line]}``; a token without ``websocket.connect`` (``*`` counts)
#   or without ``iat`` gets none (tokens/websocket.go, ``HasPermission``, ``Denylisted``).
# - Wings' server details (server/server.go, ``APIResponse``; server/configuration.go):
#   ``configuration.invocation`` and ``configuration.container.image``, from ``ServerState``.
# - ``TestGame``: a process that saves as Minecraft Java does (its console commands and the
#   lines it prints are Minecraft's): it rewrites its region files in place, chunk by chunk,
#   all the time while saving is on; ``save-off`` stops the autosave but not a save in
#   progress; ``save-all flush`` writes every region file once more, slowly, then prints
#   ``Saved the game`` and writes nothing until ``save-on``. ``saved`` holds the files as
#   they were when it printed that line: a consistent backup holds exactly these.

GAME_LINE = "[12:00:00 INFO]: {}"


@dataclass
class TestGame:
    __test__ = False  # not a pytest class

    root: Path
    publish: Callable[[str], Awaitable[None]]
    files: int = 6
    size: int = 128 * 1024
    chunk: int = 8 * 1024
    chunk_pause: float = 0.002
    flush_pause: float = 0.02  # between the chunks of save-all flush: it takes a while
    prints: bool = True  # False: a game that prints nothing (a wait for its line runs out)
    writing: bool = True
    generation: int = 0
    saved: dict[str, bytes] | None = None
    printed: list[str] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _resume: asyncio.Event = field(default_factory=asyncio.Event)
    _inbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def names(self) -> list[str]:
        return [f"world/region/r.{i}.0.mca" for i in range(self.files)]

    def content(self, index: int, generation: int) -> bytes:
        head = f"region {index} generation {generation}\n".encode()
        body = bytes([(index * 31 + generation) % 251]) * (self.size - len(head))
        return head + body

    def files_now(self) -> dict[str, bytes]:
        return {name: (self.root / name).read_bytes() for name in self.names()}

    async def run(self) -> None:
        """The game's two halves: its autosave writer and its console."""
        (self.root / "world" / "region").mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(self.names()):
            (self.root / name).write_bytes(self.content(i, 0))
        await asyncio.gather(self._autosave(), self._console())

    async def _autosave(self) -> None:
        while True:
            if not self.writing:
                self._resume.clear()
                await self._resume.wait()
                continue
            self.generation += 1
            for i in range(self.files):
                async with self._lock:
                    if self.writing:
                        await self._write(i, self.generation, self.chunk_pause)

    async def _write(self, index: int, generation: int, pause: float) -> None:
        data = self.content(index, generation)
        with open(self.root / self.names()[index], "r+b") as f:
            for offset in range(0, len(data), self.chunk):
                f.seek(offset)
                f.write(data[offset : offset + self.chunk])
                f.flush()
                await asyncio.sleep(pause)

    async def _print(self, text: str) -> None:
        line = GAME_LINE.format(text)
        self.printed.append(line)
        if self.prints:
            await self.publish(line)

    def command(self, line: str) -> None:
        self._inbox.put_nowait(line)

    async def _console(self) -> None:
        while True:
            command = (await self._inbox.get()).strip()
            if command == "save-off":
                await self._print("Automatic saving is now disabled")
            elif command == "save-all flush":
                await self._print("Saving the game (this may take a moment!)")
                async with self._lock:
                    self.generation += 1
                    for i in range(self.files):
                        await self._write(i, self.generation, self.flush_pause)
                    self.writing = False
                    self.saved = self.files_now()
                await self._print("Saved the game")
            elif command == "save-on":
                self.writing = True
                self._resume.set()
                await self._print("Automatic saving is now enabled")


@dataclass
class ConsoleHub:
    remote: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    origins: list[str | None] = field(default_factory=list)  # of every upgrade request
    refused: list[str | None] = field(default_factory=list)  # Origins refused
    claims: list[dict[str, Any]] = field(default_factory=list)  # of listening sockets
    listeners: dict[str, list[web.WebSocketResponse]] = field(default_factory=dict)
    games: dict[str, TestGame] = field(default_factory=dict)

    def origin_allowed(self, origin: str | None) -> bool:
        if self.remote is None:
            return True
        if origin == self.remote:
            return True
        return any(o == "*" or o == origin for o in self.allowed_origins)

    def listen(self, server: str, ws: web.WebSocketResponse, claims: dict[str, Any]) -> None:
        permissions = claims.get("permissions") or []
        if "iat" not in claims or not (
            "websocket.connect" in permissions or "*" in permissions
        ):
            return
        self.claims.append(claims)
        self.listeners.setdefault(server, []).append(ws)

    async def publish(self, server: str, line: str) -> None:
        for ws in list(self.listeners.get(server, [])):
            if ws.closed:
                self.listeners[server].remove(ws)
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"event": "console output", "args": [line]})

    def commands(self, server: str, commands: list[str]) -> None:
        game = self.games.get(server)
        if game is not None:
            for command in commands:
                game.command(command)


def start_game(
    wings: WingsStandin, uuid: str, image: str = "", invocation: str = "", **kw: Any
) -> TestGame:
    """A running server (with this image and startup invocation) whose process is a
    :class:`TestGame` playing in ``root/uuid``; it stops with the stand-in."""
    wings.server(uuid, state="running", image=image, invocation=invocation)

    async def publish(line: str) -> None:
        await wings.console.publish(uuid, line)

    game = wings.console.games[uuid] = TestGame(wings.root / uuid, publish, **kw)
    task = asyncio.create_task(game.run())
    wings._tasks.add(task)
    task.add_done_callback(wings._tasks.discard)
    return game


def console_origin(wings: WingsStandin) -> Any:
    """The middleware that runs ``CheckOrigin`` on the console's upgrade (see above)."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/servers/") and request.path.endswith("/ws"):
            origin = request.headers.get("Origin")
            wings.console.origins.append(origin)
            if not wings.console.origin_allowed(origin):
                wings.console.refused.append(origin)
                return web.Response(status=403, text="Forbidden\n")
        return await handler(request)

    return check
