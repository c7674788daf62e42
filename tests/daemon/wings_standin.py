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
- ``/api/servers/{s}/ws``: Wings' socket (router/router_server_ws.go, router/websocket/
  websocket.go): each frame decoded as Go decodes it (below), undecodable ones dropped; ``auth``
  checked as Wings checks the token (signature, claim types, ``exp``, the denylist by ``iat``,
  ``websocket.connect``; Pelican also the scope) -> ``auth success`` then ``status``, or ``jwt
  error`` / ``daemon error``; every other message and every event sent needs a valid token
  (``TokenValid``: expiry, denylist, permission, server uuid) or gets a ``jwt error``; ``send
  command`` -> ``console output`` with the command; ``set state`` runs the power action (with
  its permission); what arrives (frames, close codes) is recorded. ``push`` sends a frame.
- ``flavour`` (``WINGSBAK_TEST_WINGS``, default pterodactyl): Pterodactyl Wings decodes every
  socket frame, binary too, with goccy/go-json (keys matched by ASCII case); Pelican drops
  binary frames and frames over 32 KiB and decodes with encoding/json (Unicode case folding).
  Both read a power body with gin's ``BindJSON`` (encoding/json, first value only).

Go's JSON (``go_decode``) is implemented here on its own, not taken from wingsbak.gojson, so
the tests set two readings against each other.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from daemon_helpers import NODE_TOKEN, free_port
from wings_lifecycle import WingsLifecycle, add_lifecycle_routes

CHUNK = 256 * 1024
POWER_ACTIONS = ("start", "stop", "restart", "kill")
PTERODACTYL = "pterodactyl"
PELICAN = "pelican"
DEFAULT_FLAVOUR = os.environ.get("WINGSBAK_TEST_WINGS", PTERODACTYL)


# -- Go's JSON, as Wings reads it --------------------------------------------------------------


class GoDecodeError(ValueError):
    """Go's decoder returns an error: Wings drops the socket message, or answers 400."""


@dataclass
class _Object:
    pairs: list[tuple[str, Any]]


@dataclass
class _Number:
    text: str


# One token of JSON as Go's scanner (encoding/json/scanner.go) accepts it, after whitespace.
_TOKEN = re.compile(
    rb"[ \t\r\n]*(?:"
    rb'(?P<string>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")'
    rb"|(?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    rb"|(?P<literal>true|false|null)"
    rb"|(?P<punct>[{}\[\],:]))"
)
_MAX_DEPTH = 10_000  # encoding/json scanner.go maxNestingDepth; goccy's is the same
_LITERAL = {b"true": True, b"false": False, b"null": None}


def _go_string(token: bytes) -> str:
    # encoding/json decode.go unquote: invalid UTF-8 and lone surrogates become U+FFFD.
    text = json.loads(token.decode("utf-8", "replace"))
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def go_parse(data: bytes, first_value_only: bool = False) -> Any:
    """The JSON value in ``data`` as a tree (objects keep every pair, in order), or
    GoDecodeError. ``first_value_only``: json.Decoder.Decode (gin's BindJSON), which reads the
    first value and never what follows; otherwise json.Unmarshal, which needs the whole input
    to be one value."""
    stack: list[Any] = []  # open containers: _Object or list
    keys: list[str | None] = []  # per open object, the key awaiting its value
    state = "value"  # what may come next: value, first (value or ]), key, first-key, colon, next
    pos = 0
    while True:
        match = _TOKEN.match(data, pos)
        if match is None:
            rest = data[pos:].strip(b" \t\r\n")
            raise GoDecodeError("unexpected end of JSON input" if not rest else "invalid char")
        pos = match.end()
        punct = match.group("punct")
        value: Any = None
        complete = False
        if state in ("key", "first-key"):
            if punct == b"}" and state == "first-key":
                value, complete = stack.pop(), True
                keys.pop()
            elif match.group("string") is not None:
                keys[-1] = _go_string(match.group("string"))
                state = "colon"
                continue
            else:
                raise GoDecodeError("expected a key")
        elif state == "colon":
            if punct != b":":
                raise GoDecodeError("expected a colon")
            state = "value"
            continue
        elif state == "next":
            top = stack[-1]
            if punct == b",":
                state = "key" if isinstance(top, _Object) else "value"
                continue
            if punct == (b"}" if isinstance(top, _Object) else b"]"):
                value, complete = stack.pop(), True
                if isinstance(value, _Object):
                    keys.pop()
            else:
                raise GoDecodeError("expected a comma or a closing bracket")
        else:  # a value (or, first in an array, its end)
            if punct == b"]" and state == "first":
                value, complete = stack.pop(), True
            elif punct in (b"{", b"["):
                if len(stack) + 1 > _MAX_DEPTH:
                    raise GoDecodeError("exceeded max depth")
                if punct == b"{":
                    stack.append(_Object([]))
                    keys.append(None)
                    state = "first-key"
                else:
                    stack.append([])
                    state = "first"
                continue
            elif punct is not None:
                raise GoDecodeError("expected a value")
            elif match.group("string") is not None:
                value, complete = _go_string(match.group("string")), True
            elif match.group("number") is not None:
                value, complete = _Number(match.group("number").decode()), True
            else:
                value, complete = _LITERAL[match.group("literal")], True
        assert complete
        if not stack:
            if first_value_only:
                literal = match.group("literal") or match.group("number")
                if literal and data[pos : pos + 1] not in (b"", b" ", b"\t", b"\r", b"\n"):
                    raise GoDecodeError("invalid character after top-level value")
                return value
            if data[pos:].strip(b" \t\r\n"):
                raise GoDecodeError("invalid character after top-level value")
            return value
        top = stack[-1]
        if isinstance(top, _Object):
            top.pairs.append((keys[-1], value))
        else:
            top.append(value)
        state = "next"


def equal_fold(key: str, name: str) -> bool:
    """encoding/json: bytes.EqualFold, Unicode simple folding (U+017F folds with s, the
    Kelvin sign U+212A with k: unicode.caseOrbit)."""
    return key.translate({0x17F: "s", 0x212A: "k"}).lower() == name.lower()


def ascii_fold(key: str, name: str) -> bool:
    """goccy/go-json v0.10 (internal/decoder/struct.go, decodeKeyByBitmapUint8): byte by byte,
    ASCII letters lowered."""
    raw = key.encode("utf-8", "surrogatepass")
    return raw.isascii() and raw.lower() == name.lower().encode()


def go_struct(
    tree: Any, fields: dict[str, str], fold: Callable[[str, str], bool] = equal_fold
) -> dict[str, Any]:
    """What decoding ``tree`` into a struct with these fields (JSON name -> "string",
    "[]string" or "int") leaves in it, or GoDecodeError for any error (Wings then discards the
    whole message): every matching key assigns, in order; null leaves a string or an int as it
    was and empties a list; a list read again keeps the element it had where the new one is
    null (decode.go array() decodes into the slice it finds)."""
    values: dict[str, Any] = {
        name: {"string": "", "[]string": None, "int": 0}[kind] for name, kind in fields.items()
    }
    if tree is None:
        return values
    if not isinstance(tree, _Object):
        raise GoDecodeError("cannot unmarshal into a struct")
    for key, value in tree.pairs:
        name = key if key in fields else next((n for n in fields if fold(key, n)), None)
        if name is None or (value is None and fields[name] != "[]string"):
            continue
        kind = fields[name]
        if kind == "string":
            if not isinstance(value, str):
                raise GoDecodeError(f"cannot unmarshal into the string field {name}")
            values[name] = value
        elif kind == "int":
            if not isinstance(value, _Number) or not re.fullmatch(r"-?(0|[1-9]\d*)", value.text):
                raise GoDecodeError(f"cannot unmarshal into the int field {name}")
            values[name] = int(value.text)
            if not -(2**63) <= values[name] < 2**63:
                raise GoDecodeError("number overflows int")
        elif value is None:
            values[name] = None
        else:
            if not isinstance(value, list):
                raise GoDecodeError(f"cannot unmarshal into the list field {name}")
            before = values[name] or []
            after = []
            for i, item in enumerate(value):
                if item is None:
                    after.append(before[i] if i < len(before) else "")
                elif isinstance(item, str):
                    after.append(item)
                else:
                    raise GoDecodeError(f"cannot unmarshal into an element of {name}")
            values[name] = after
    return values


MESSAGE_FIELDS = {"event": "string", "args": "[]string"}  # router/websocket/message.go
POWER_FIELDS = {"action": "string", "wait_seconds": "int"}  # router/router_server.go


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
    actions: list[str] = field(default_factory=list)  # power actions run, from either route


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
    # Tokens issued before Wings booted are refused (router/tokens/websocket.go,
    # wingsBootTime). Whole seconds here: the tests sign tokens in the stand-in's first second.
    boot_time: float = field(default_factory=lambda: float(int(time.time())))
    denied_jti: dict[str, float] = field(default_factory=dict)  # DenyJTI: jti -> when
    denied_users: dict[str, float] = field(default_factory=dict)  # Pelican: "server:user" -> when
    # Server deletion, transfers and Pelican's User-Agent: tests/daemon/wings_lifecycle.py.
    lifecycle: WingsLifecycle = field(default_factory=WingsLifecycle)
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
        """The actions of the power requests for ``server`` as Wings read them (valid or
        not; run ones are in ``servers[server].actions``)."""
        return [
            r.body.get("action")
            for r in self.received("POST", f"/api/servers/{server}/power")
            if isinstance(r.body, dict)
        ]

    def deny_jti(self, jti: str) -> None:
        """The panel revoked every token with this ``jti`` issued until now (DenyJTI)."""
        self.denied_jti[jti] = time.time()

    def deny_user(self, server: str, user: str) -> None:
        """Pelican: the panel revoked the user's tokens for the server (DenyForServer)."""
        self.denied_users[f"{server}:{user}"] = time.time()

    async def push(self, server: str, frame: str | bytes) -> None:
        """Send ``frame`` as it is to every socket of ``server``."""
        for ws in [w for w in self.sockets if w[SOCKET_SERVER] == server]:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
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
        add_lifecycle_routes(self, app)
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
        # POST /api/transfers carries the panel's JWT, checked by its handler (router.go).
        transfer = request.path == "/api/transfers" and request.method == "POST"
        if request.path.startswith("/api/") and not request.path.endswith("/ws") and not transfer:
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
        s.actions.append(action)
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
        # router/router_server.go postServerPower: gin's c.BindJSON, i.e. encoding/json's
        # Decoder (the first value only); any error is a 400 and nothing runs.
        try:
            body = go_struct(go_parse(await request.read(), first_value_only=True), POWER_FIELDS)
        except GoDecodeError:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "Failed to parse the request body."}),
                content_type="application/json",
            ) from None
        request[RECORD].body = body
        action = body["action"]
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
        ws[SOCKET_SERVER] = server
        self.sockets.append(ws)
        socket = _Socket(self, ws, server, s)
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                self.ws_frames.append((server, msg.data))
                raw = msg.data.encode() if msg.type == WSMsgType.TEXT else msg.data
                # router_server_ws.go: Pterodactyl reads whatever ReadMessage gives; Pelican
                # drops binary frames and frames over 32 KiB.
                if self.flavour == PELICAN and (msg.type != WSMsgType.TEXT or len(raw) > 32_768):
                    continue
                fold = equal_fold if self.flavour == PELICAN else ascii_fold
                try:
                    message = go_struct(go_parse(raw), MESSAGE_FIELDS, fold)
                except GoDecodeError:
                    continue  # "Discard and JSON parse errors into the void"
                await socket.inbound(message["event"], message["args"] or [])
        finally:
            self.sockets.remove(ws)
            self.ws_closes.append(ws.close_code)
        return ws

    # router/websocket/websocket.go NewTokenPayload, with router/tokens/parser.go ParseToken.
    def socket_token(self, token: str) -> dict[str, Any]:
        """The claims of an ``auth`` token Wings accepts, or _Refused as Wings refuses it."""
        try:
            claims = jwt.decode(token, self.token, algorithms=["HS256"], options=_SIGNATURE_ONLY)
        except jwt.InvalidTokenError:
            raise _Refused(None) from None  # no JWT error: a "daemon error"
        if not _go_claims(claims, self.flavour):
            raise _Refused(None)  # the payload does not decode into Go's types
        exp = claims.get("exp")
        if exp is None or time.time() > exp:  # jwt.ExpirationTimeValidator
            raise _Refused(EXPIRED)
        if self.denylisted(claims):
            raise _Refused(DENYLISTED)
        if not self.may(claims, "websocket.connect"):
            raise _Refused(NO_CONNECT)
        return claims

    def denylisted(self, claims: dict[str, Any]) -> bool:
        """router/tokens/websocket.go Denylisted (Pelican: isDenylisted)."""
        iat = claims.get("iat")
        if iat is None or iat < self.boot_time:
            return True
        jti_denied = self.denied_jti.get(str(claims.get("jti", "")))
        if self.flavour != PELICAN:
            return jti_denied is not None and iat < jti_denied
        server, user = claims.get("server_uuid") or "", claims.get("user_uuid") or ""
        if not server or not user:
            return True
        user_denied = self.denied_users.get(f"{server}:{user}")
        return any(t is not None and iat <= t for t in (jti_denied, user_denied))

    def may(self, claims: dict[str, Any], permission: str) -> bool:
        """HasPermission (a denylisted token has none); Pelican's connect also needs the
        ``websocket`` scope (HasScope)."""
        perms = claims.get("permissions") or []
        granted = permission in perms or ("*" in perms and not permission.startswith("admin"))
        if self.flavour == PELICAN and permission == "websocket.connect":
            granted = granted and "websocket" in (claims.get("scope") or "").split(" ")
        return granted and not self.denylisted(claims)


SOCKET_SERVER = web.ResponseKey("server", str)
EXPIRED = "jwt: exp claim is invalid"
DENYLISTED = "jwt: created too far in past (denylist)"
NO_CONNECT = "jwt: missing connect permission"
UUID_MISMATCH = "jwt: server uuid mismatch"
NO_JWT = "jwt: no jwt present"
_INT64 = range(-(2**63), 2**63)
# gbrlsnchs/jwt v3 checks the HS256 signature; Wings adds the expiry alone (parser.go).
_SIGNATURE_ONLY = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
}


class _Refused(Exception):
    """An ``auth`` Wings refuses: ``text`` for a JWT error, None for any other error."""

    def __init__(self, text: str | None) -> None:
        super().__init__(text)
        self.text = text


def _go_claims(claims: dict[str, Any], flavour: str) -> bool:
    """The claims decode into Wings' WebsocketPayload (gbrlsnchs/jwt v3 Payload: times as
    whole numbers, ``aud`` a string or a list of them, the other registered claims strings)."""
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is not None and (type(value) is not int or value not in _INT64):
            return False
    aud = claims.get("aud")
    if aud is not None and not (
        isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))
    ):
        return False
    strings = ["iss", "sub", "jti", "user_uuid", "server_uuid"]
    if flavour == PELICAN:
        strings.append("scope")
    if any(claims.get(n) is not None and not isinstance(claims[n], str) for n in strings):
        return False
    perms = claims.get("permissions")
    return perms is None or (isinstance(perms, list) and all(isinstance(p, str) for p in perms))


class _Socket:
    """One socket's handler (router/websocket/websocket.go Handler): the token in force."""

    def __init__(self, wings: WingsStandin, ws: web.WebSocketResponse, server: str, s: ServerState):
        self.wings = wings
        self.ws = ws
        self.server = server
        self.s = s
        self.claims: dict[str, Any] | None = None

    async def unsafe_send(self, event: str, args: list[str] | None = None) -> None:
        # gorilla's WriteJSON: json.Encoder, args omitted when empty (omitempty), a newline.
        message: dict[str, Any] = {"event": event}
        if args:
            message["args"] = args
        await self.ws.send_str(json.dumps(message, separators=(",", ":")) + "\n")

    def token_error(self) -> str | None:
        """TokenValid."""
        if self.claims is None:
            return NO_JWT
        if time.time() > self.claims["exp"]:
            return EXPIRED
        if self.wings.denylisted(self.claims):
            return DENYLISTED
        if not self.wings.may(self.claims, "websocket.connect"):
            return NO_CONNECT
        if self.claims.get("server_uuid") != self.server:
            return UUID_MISMATCH
        return None

    async def send(self, event: str, args: list[str] | None = None) -> None:
        """SendJson: nothing but a jwt error goes to a socket whose token is not valid."""
        error = self.token_error()
        if error is not None:
            await self.unsafe_send("jwt error", [error])
        else:
            await self.unsafe_send(event, args)

    async def send_error(self, refused: _Refused) -> None:
        """SendErrorJson: a JWT error's text, or a generic daemon error."""
        if refused.text is not None:
            await self.unsafe_send("jwt error", [refused.text])
            return
        text = "an unexpected error was encountered while handling this request"
        await self.unsafe_send("daemon error", [f"Error Event [{uuid.uuid4()}]: {text}"])

    async def inbound(self, event: str, args: list[str]) -> None:
        """HandleInbound."""
        if event != "auth":
            error = self.token_error()
            if error is not None:
                await self.unsafe_send("jwt error", [error])
                return
        if event == "auth":
            try:
                claims = self.wings.socket_token("".join(args))
            except _Refused as refused:
                await self.send_error(refused)
                return
            first = self.claims is None
            self.claims = claims
            await self.unsafe_send("auth success")
            if first:
                await self.send("status", [self.s.state])
        elif event == "set state":
            action = "".join(args)
            needs = {"start": "control.start", "stop": "control.stop", "kill": "control.stop"}
            needs["restart"] = "control.restart"
            assert self.claims is not None
            if action in needs and not self.wings.may(self.claims, needs[action]):
                return
            if action not in POWER_ACTIONS:
                await self.send_error(_Refused(None))  # HandlePowerAction fails
                return
            self.wings.power_action(self.s, action)
            await self.send("status", [self.s.state])
        elif event == "send command":
            assert self.claims is not None
            if not self.wings.may(self.claims, "control.console"):
                return
            # The stand-in's game echoes every command (Wings forwards the server's output).
            self.s.commands.append("".join(args))
            await self.send("console output", ["".join(args)])
        elif event == "send stats":
            await self.send("stats", [json.dumps({"state": self.s.state})])
