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
- With ``config_file`` (Wings' config.yml): read at every start, binding its ``api.host`` and
  ``api.port`` and writing it back (cmd/root.go); ``restart()`` is ``systemctl restart wings``;
  ``POST /api/update`` as router/router_system.go, per ``flavour``: Pterodactyl Wings takes the
  pushed token at once, Pelican Wings writes it to the file but keeps the one it started with
  and never takes ``remote`` (``json:"-"``, config/config.go).
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import hashlib
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jwt
import yaml
from aiohttp import WSMsgType, web
from daemon_helpers import NODE_TOKEN, free_port

CHUNK = 256 * 1024
POWER_ACTIONS = ("start", "stop", "restart", "kill")
PTERODACTYL = "pterodactyl"
PELICAN = "pelican"
DEFAULT_FLAVOUR = os.environ.get("WINGSBAK_TEST_WINGS", PTERODACTYL)


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
    flavour: str = DEFAULT_FLAVOUR
    # Wings' config.yml (see "configuration" below): read at every start, as cmd/root.go
    # does, and written by /api/update; None: the fields here configure it.
    config_file: Path | None = None
    host: str = "127.0.0.1"
    token_id: str = ""
    remote: str = ""
    config: dict[str, Any] = field(default_factory=dict)
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
        if self.config_file is not None:
            self._boot_from_file()
        app = web.Application(middlewares=[self._record, self._auth], client_max_size=1 << 40)
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
        r.add_post("/api/update", self._update)
        # Go's net/http hands a handler the body as sent: no decoding of Content-Encoding.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, auto_decompress=False
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, reuse_address=True, ssl_context=self.tls
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
                "configuration": {"uuid": request.match_info["server"]},
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

    # -- configuration: Wings' file, /api/update, restarts --------------------------------------

    # Keys a push never sets (``json:"-"`` in config/config.go): Pelican Wings keeps ``remote``
    # and its paths; its in-memory token (``Token``, ``json:"-"``) stays too, see _update.
    _NOT_PUSHED: ClassVar[dict[str, tuple[tuple[str, ...], ...]]] = {
        PTERODACTYL: (("allowed_mounts",),),
        PELICAN: (
            ("allowed_mounts",),
            ("remote",),
            ("api", "disable_remote_download"),
            *(
                ("system", name)
                for name in (
                    "root_directory",
                    "log_directory",
                    "data",
                    "archive_directory",
                    "backup_directory",
                    "tmp_directory",
                )
            ),
        ),
    }

    def _boot_from_file(self) -> None:
        """cmd/root.go: the configuration is read from the file, the API binds its
        ``api.host:api.port``, and the file is written back (config.WriteToDisk) at every
        start."""
        assert self.config_file is not None
        self.config = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        api = self.config.get("api") or {}
        self.host, self.port = str(api.get("host", "0.0.0.0")), int(api.get("port", 8080))
        self.token = str(self.config["token"])
        self.token_id = str(self.config.get("token_id", ""))
        self.remote = str(self.config.get("remote", ""))
        self._write_config(self.config)

    def _write_config(self, config: dict[str, Any]) -> None:
        # config.WriteToDisk: os.WriteFile, which truncates the file and writes it in place.
        assert self.config_file is not None
        with open(self.config_file, "w", encoding="utf-8") as f:
            f.write(yaml.safe_dump(config))

    async def restart(self) -> None:
        """``systemctl restart wings``: a new process that reads its file (and binds what it
        says: a port taken by another process fails the start, with OSError)."""
        await self.stop()
        await self.start()

    async def _update(self, request: web.Request) -> web.Response:
        """router/router_system.go postUpdateConfiguration."""
        if self.config.get("ignore_panel_config_updates"):
            return web.json_response({"applied": False})
        body = await self._json(request)
        if not isinstance(body, dict):
            message = "The data passed in the request was not in a parsable format."
            return web.json_response({"error": message}, status=400)
        # c.BindJSON(&cfg) into a copy of the running configuration: what the body names is
        # replaced (objects key by key), the rest stays.
        skipped = self._NOT_PUSHED[self.flavour]
        merged = copy.deepcopy(self.config)

        def merge(into: dict[str, Any], over: dict[str, Any], at: tuple[str, ...]) -> None:
            for key, value in over.items():
                if (*at, key) in skipped:
                    continue
                if isinstance(value, dict) and isinstance(into.get(key), dict):
                    merge(into[key], value, (*at, key))
                else:
                    into[key] = copy.deepcopy(value)

        merge(merged, body, ())
        # A key under /etc/letsencrypt/live/ keeps the certificate and key Wings has.
        pushed = merged.setdefault("api", {}).setdefault("ssl", {})
        if str(pushed.get("key", "")).startswith("/etc/letsencrypt/live/"):
            current = (self.config.get("api") or {}).get("ssl") or {}
            pushed["cert"], pushed["key"] = current.get("cert", ""), current.get("key", "")
        self._write_config(merged)
        # config.Set: Pterodactyl's bearer and JWT key are the new token from now on;
        # Pelican's (Token.Token, json:"-") stays what it read at start.
        self.config = merged
        self.token_id = str(merged.get("token_id", ""))
        if self.flavour == PTERODACTYL:
            self.token = str(merged["token"])
            self.remote = str(merged.get("remote", ""))
        return web.json_response({"applied": True})
