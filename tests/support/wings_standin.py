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

- With ``config_file`` (Wings' config.yml): read at every start, binding its ``api.host`` and
  ``api.port`` and writing it back (cmd/root.go); ``restart()`` is ``systemctl restart wings``;
  ``POST /api/update`` as router/router_system.go, per ``flavour``: Pterodactyl Wings takes the
  pushed token at once, Pelican Wings writes it to the file but keeps the one it started with
  and never takes ``remote`` (``json:"-"``, config/config.go).

- At the end, in a section of its own: the console as Wings publishes it to authenticated
  sockets, Wings' ``Origin`` check, the server's image and invocation, and a test game that
  saves as Minecraft does (``start_game``).

Go's JSON (``go_decode``) is implemented here on its own, not taken from wingsbak.wings.gojson, so
the tests set two readings against each other.

Issue 19.9 (the section "Wings' rules, issue 19.9" below, each naming its Wings file):
- file tokens (``/download/file``, ``/upload/file``) are checked as Wings' ParseToken checks
  them (HS256 and ``exp``; ``aud`` and ``nbf`` as the panels send them), one use each, and on
  Pelican the denylist and the scope; a refused one is Wings' 500;
- ``Expect: 100-continue`` is answered as Go's server answers it: a 100 when a handler first
  reads the body, none for a request refused unread (its connection closes after the answer);
- ``/api/*`` routes need the bearer token except the websocket and ``/api/transfers``;
- power actions go through Wings' power lock, ``start`` passes through ``starting``, a start
  of a server not offline fails, and every state change is a ``status`` to the server's
  authenticated sockets; socket events are filtered by permission as SendJson filters them;
- ``POST /api/transfers`` takes an incoming transfer's multipart stream as Wings does;
- ``/upload/file`` reads the whole multipart body before anything else (ParseMultipartForm)
  and refuses files over ``upload_limit``;
- the client address of each request (``Received.client_ip``) is gin's ClientIP: the
  ``X-Forwarded-For`` chain is read only from ``trusted_proxies``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gzip
import hashlib
import ipaddress
import json
import mmap
import os
import re
import ssl
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jwt
import yaml
from aiohttp import BodyPartReader, WSMsgType, web

from tests.support.daemon_helpers import NODE_TOKEN, free_port
from tests.support.wings_lifecycle import WingsLifecycle, add_lifecycle_routes

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
    tree: Any, fields: dict[str, Any], fold: Callable[[str, str], bool] = equal_fold
) -> dict[str, Any]:
    """What decoding ``tree`` into a struct with these fields (JSON name -> "string",
    "[]string", "int", or a dict of fields: a list of such structs) leaves in it, or
    GoDecodeError for any error (Wings then discards the whole message): every matching key
    assigns, in order; null leaves a string or an int as it was and empties a list; a list
    read again keeps the element it had where the new one is null, and decodes an object
    into the element it finds (decode.go array() decodes into the slice it finds)."""
    return _decode_into({name: _zero(kind) for name, kind in fields.items()}, tree, fields, fold)


def _zero(kind: Any) -> Any:
    return {"string": "", "[]string": None, "int": 0}.get(kind) if isinstance(kind, str) else None


def _decode_into(
    values: dict[str, Any], tree: Any, fields: dict[str, Any], fold: Callable[[str, str], bool]
) -> dict[str, Any]:
    if tree is None:
        return values
    if not isinstance(tree, _Object):
        raise GoDecodeError("cannot unmarshal into a struct")
    for key, value in tree.pairs:
        name = key if key in fields else next((n for n in fields if fold(key, n)), None)
        if name is None:
            continue
        kind = fields[name]
        is_list = kind == "[]string" or isinstance(kind, dict)
        if value is None and not is_list:
            continue
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
                had = before[i] if i < len(before) else None
                if isinstance(kind, dict):  # a struct per element
                    base = dict(had) if had is not None else go_struct(None, kind, fold)
                    after.append(_decode_into(base, item, kind, fold))
                elif item is None:
                    after.append(had if had is not None else "")
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
    raw: bytes = b""  # a file route's JSON body as it came
    client_ip: str = ""  # gin's ClientIP (issue 19.9)


RECORD = web.RequestKey("record", Received)


@dataclass
class ServerState:
    state: str = "offline"
    stop_delay: float | None = 0.2  # seconds from "stopping" to "offline"; None: never
    commands: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # power actions run, from either route
    image: str = ""  # Wings' configuration.container.image (the console section below)
    invocation: str = ""  # and configuration.invocation
    # Issue 19.9: the container's start holds the power lock this long (Environment.Start);
    # the game is up ("running") after start_delay (None: it stays "starting").
    start_lock: float = 0.05
    start_delay: float | None = 0.1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # server/power.go powerLock
    restoring: bool = False  # Wings restores a backup of its own (server/backup.go)
    # configuration.build.disk_space in MiB, 0 unlimited (environment/settings.go Limits)
    disk_space: int = 0
    # configuration.egg.file_denylist (server/configuration.go EggConfiguration)
    file_denylist: list[str] = field(default_factory=list)


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
    flavour: str = DEFAULT_FLAVOUR
    # Tokens issued before Wings booted are refused (router/tokens/websocket.go,
    # wingsBootTime). Whole seconds here: the tests sign tokens in the stand-in's first second.
    boot_time: float = field(default_factory=lambda: float(int(time.time())))
    denied_jti: dict[str, float] = field(default_factory=dict)  # DenyJTI: jti -> when
    denied_users: dict[str, float] = field(default_factory=dict)  # Pelican: "server:user" -> when
    # Wings' config.yml (see "configuration" below): read at every start, as cmd/root.go
    # does, and written by /api/update; None: the fields here configure it.
    config_file: Path | None = None
    host: str = "127.0.0.1"
    token_id: str = ""
    remote: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    # Issue 19.9: api.trusted_proxies (none by default, as in Wings' config), api.upload_limit
    # in MB, the incoming
    # transfers as (server, successful), the unique_ids of file tokens used.
    trusted_proxies: list[str] = field(default_factory=list)
    upload_limit: int = 100
    transfers: list[tuple[str, bool]] = field(default_factory=list)
    used_ids: set[str] = field(default_factory=set)
    handlers: list[_Socket] = field(default_factory=list)  # sockets listening for events
    errors: list[str] = field(default_factory=list)  # what Wings only logs (power actions)
    # Server deletion, transfers and Pelican's User-Agent: tests/support/wings_lifecycle.py.
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
        if self.config_file is not None:
            self._boot_from_file()
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
        r.add_post("/api/update", self._update)
        add_lifecycle_routes(self, app)
        r.add_post("/api/transfers", self._transfers)  # issue 19.9
        add_file_routes(self, app)  # issue 21, the section at the end
        for route in r.routes():
            # Go answers Expect itself, when a handler reads the body (issue 19.9).
            route._expect_handler = go_expect  # type: ignore[attr-defined]
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
        rec.client_ip = self.client_ip(request)
        self.requests.append(rec)
        request[RECORD] = rec
        response: web.StreamResponse = await handler(request)
        if request.get(CONTINUE_OWED) and not response.prepared:
            # net/http: a 100-continue never sent, the body left unread: Go closes the
            # connection after the answer (closeAfterReply).
            response.force_close()
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # router/router.go: /api/transfers authenticates with the panel's JWT (issue 19.9).
        public = request.path.endswith("/ws") or (
            request.method == "POST" and request.path == "/api/transfers"
        )
        if request.path.startswith("/api/") and not public:
            # middleware.go RequireAuthorization: strings.SplitN(header, " ", 2).
            scheme, space, token = request.headers.get("Authorization", "").partition(" ")
            if scheme != "Bearer" or not space:
                return web.json_response(
                    {"error": "The required authorization heads were not present in the request."},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
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
                    "build": {"disk_space": s.disk_space},
                    "egg": {"file_denylist": s.file_denylist},
                },
            }
        )

    async def _power(self, request: web.Request) -> web.Response:
        s = self._known(request)
        await go_continue(request)
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
        # The action runs after the answer, waiting for the power lock up to wait_seconds
        # (out of 0..300: 30); its errors are only logged there (issue 19.9).
        wait = body["wait_seconds"] if 0 <= body["wait_seconds"] <= 300 else 30
        self._background(self.power_action(s, action, wait), quiet=True)
        return web.Response(status=202)

    async def _commands(self, request: web.Request) -> web.Response:
        s = self._known(request)
        if s.state != "running":
            return web.json_response(
                {"error": "Cannot send commands to a stopped server instance."}, status=502
            )
        await go_continue(request)
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
        await go_continue(request)
        await self._sink(request, request.content.read, path)
        return web.Response(status=204)

    async def _download_file(self, request: web.Request) -> web.StreamResponse:
        claims = self.file_token(request.query.get("token", ""), "file-download")
        path = self._file(claims["server_uuid"], claims["file_path"])
        return await self._send_file(request, path)

    async def _echo(self, request: web.Request) -> web.Response:
        """What the request looked like on arrival (for header and query assertions)."""
        await go_continue(request)
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


    # -- Wings' rules, issue 19.9 ------------------------------------------------------------

    def client_ip(self, request: web.Request) -> str:
        """gin's Context.ClientIP as Wings configures it (router/router.go SetTrustedProxies
        with api.trusted_proxies; gin's defaults: X-Forwarded-For, then X-Real-IP, each read
        as its first header line): only a trusted peer's headers are read, from the right,
        up to the first address that is not trusted."""
        peer = request.remote or ""
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return ""
        if not self._trusted(address):
            return str(address)
        for name in ("X-Forwarded-For", "X-Real-IP"):
            items = (request.headers.get(name) or "").split(",")
            if items == [""]:
                continue
            for i in range(len(items) - 1, -1, -1):
                text = items[i].strip()
                try:
                    hop = ipaddress.ip_address(text)
                except ValueError:
                    break  # gin: the header is not valid, the next one is read
                if i == 0 or not self._trusted(hop):
                    return text
        return str(address)

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        for entry in self.trusted_proxies:
            cidr = entry if "/" in entry else f"{entry}/{address.max_prefixlen}"
            network = ipaddress.ip_network(cidr, strict=False)
            if address.version == network.version and address in network:
                return True
        return False

    def file_token(self, token: str, scope: str) -> dict[str, Any]:
        """The claims of a file link's JWT (router/router_download.go getDownloadFile,
        router/router_server_files.go postServerUploadFiles): tokens.ParseToken (the HS256
        signature, ``exp``; ``aud``, ``nbf``, ``iat`` are not looked at), then a server Wings
        knows and a unique_id not used before (token_store.go); Pelican also the denylist and
        the scope. A token ParseToken refuses is Wings' 500 (CaptureAndAbort)."""
        try:
            claims = jwt.decode(token, self.token, algorithms=["HS256"], options=_SIGNATURE_ONLY)
        except jwt.InvalidTokenError:
            raise _wings_500() from None
        exp = claims.get("exp")
        if not _go_claims(claims, self.flavour) or type(exp) is not int or int(time.time()) > exp:
            raise _wings_500()
        unique = str(claims.get("unique_id") or "")
        scoped = scope in str(claims.get("scope") or "").split(" ")
        refused = (
            claims.get("server_uuid") not in self.servers
            or (self.flavour == PELICAN and (self.denylisted(claims) or not scoped))
            or unique in self.used_ids
        )
        if refused:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "The requested resource was not found on this server."}),
                content_type="application/json",
            )
        self.used_ids.add(unique)
        return claims

    async def _upload_file(self, request: web.Request) -> web.Response:
        """router/router_server_files.go postServerUploadFiles: gin's c.MultipartForm, i.e.
        ParseMultipartForm(32 MiB), reads the whole body (parts beyond the memory limit to
        temporary files) before a file is looked at; a file over api.upload_limit is a 400
        then, and the files are written only after that."""
        claims = self.file_token(request.query.get("token", ""), "file-upload")
        boundary = _multipart_boundary(request.headers.get("Content-Type", ""))
        if boundary is None:
            return web.json_response(
                {"error": "Failed to get multipart form data from request."}, status=400
            )
        await go_continue(request)
        with _BufferedBody(MULTIPART_MEMORY) as body:
            while chunk := await request.content.read(CHUNK):
                body.write(chunk)
            try:
                parts = await asyncio.to_thread(body.parts, boundary)
            except ValueError:
                return web.json_response(
                    {"error": "Failed to get multipart form data from request."}, status=400
                )
            files = [p for p in parts if p.name == "files" and p.filename is not None]
            if not files:
                return web.json_response(
                    {"error": "No files were found on the request body."}, status=400
                )
            for part in files:
                if part.size > self.upload_limit * 1024 * 1024:
                    return web.json_response(
                        {
                            "error": f"File {part.filename} is larger than the maximum file "
                            f"upload size of {self.upload_limit} MB."
                        },
                        status=400,
                    )
            directory = request.query.get("directory", "")
            for part in files:
                name = os.path.join(directory, part.filename or "")
                target = self._file(claims["server_uuid"], name)
                request[RECORD].body = await asyncio.to_thread(body.save, part, target)
        return web.Response(status=200)

    async def _transfers(self, request: web.Request) -> web.Response:
        """router/router_transfer.go postTransfers: the panel's JWT as bearer (ParseToken;
        Pelican: the ``transfer`` scope), its subject the server; the multipart stream read
        part by part: ``archive`` (a .tar.gz extracted into the server's directory, hashed on
        the way), then Pterodactyl's ``checksum`` / Pelican's ``checksum_archive`` (hex
        sha256); Pelican also ``backup_<name>`` (written to <backup_directory>/<server>/
        <name>) each with ``checksum_backup_<name>``, and ``install_logs``. Success: 200 and
        the panel told (``transfers``); any failure: Wings' 500, the server forgotten."""
        scheme, space, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not space:
            return web.json_response(
                {"error": "The required authorization heads were not present in the request."},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            claims = jwt.decode(token, self.token, algorithms=["HS256"], options=_SIGNATURE_ONLY)
        except jwt.InvalidTokenError:
            return web.json_response(_captured(), status=500)
        exp = claims.get("exp")
        if not _go_claims(claims, self.flavour) or type(exp) is not int or int(time.time()) > exp:
            return web.json_response(_captured(), status=500)
        if self.flavour == PELICAN and "transfer" not in str(claims.get("scope") or "").split(" "):
            return web.json_response({"error": "Forbidden."}, status=403)
        try:
            server = str(uuid.UUID(str(claims.get("sub") or "")))
        except ValueError:
            return web.json_response(_captured(), status=500)
        self.servers.setdefault(server, ServerState())
        ok = False
        try:
            ok = await self._receive_transfer(request, server)
        finally:
            self.transfers.append((server, ok))
            if not ok:
                self.servers.pop(server, None)
        return web.Response(status=200) if ok else web.json_response(_captured(), status=500)

    async def _receive_transfer(self, request: web.Request, server: str) -> bool:
        if not request.content_type.startswith("multipart/"):
            return False
        await go_continue(request)
        reader = await request.multipart()
        archive_sum: str | None = None
        archive_expected: str | None = None
        backups: dict[str, str] = {}
        backups_expected: dict[str, str] = {}
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name or ""
            if name == "archive":
                with tempfile.TemporaryFile() as spool:
                    digest = await _spool(part, spool)
                    spool.seek(0)
                    await asyncio.to_thread(_extract, spool, self.root / server)
                archive_sum = digest
            elif name == "checksum" and self.flavour != PELICAN:
                if archive_sum is None:
                    return False  # "archive must be sent before the checksum"
                archive_expected = (await part.read()).decode().strip()
            elif name.startswith("checksum_archive") and self.flavour == PELICAN:
                archive_expected = (await part.read()).decode()
            elif name.startswith("backup_") and self.flavour == PELICAN:
                backup = os.path.basename(name.removeprefix("backup_"))
                folder = (self.lifecycle.backup_dir or self.root.parent / "backups") / server
                folder.mkdir(parents=True, exist_ok=True)
                with (folder / backup).open("wb") as f:
                    backups[backup] = await _spool(part, f)
            elif name.startswith("checksum_backup_") and self.flavour == PELICAN:
                backups_expected[name.removeprefix("checksum_backup_")] = (
                    await part.read()
                ).decode()
            else:
                await part.release()
        if archive_sum is None or archive_expected is None:
            return False
        if self.flavour == PELICAN:  # the hex strings compared
            return archive_expected == archive_sum and all(
                backups_expected.get(b) == h for b, h in backups.items()
            )
        try:  # hex.Decode, then the bytes compared
            return bytes.fromhex(archive_expected) == bytes.fromhex(archive_sum)
        except ValueError:
            return False

    async def power_action(self, s: ServerState, action: str, wait: float = 0) -> None:
        """server/power.go HandlePowerAction: every action but kill takes the power lock
        (waiting up to ``wait`` seconds, else failing at once with PowerLocked); kill takes it
        only when free. start: PowerError unless offline, then ``starting`` (the lock held
        while the container starts) and later ``running``; stop and restart wait until the
        server is offline (environment WaitForStop), restart then starts it."""
        if s.restoring:
            raise PowerError("server is currently being restored")  # server/errors.go
        held = False
        if action != "kill":
            if s.lock.locked() and wait <= 0:
                raise PowerLocked()
            try:
                await asyncio.wait_for(s.lock.acquire(), wait if wait > 0 else None)
            except TimeoutError:
                text = f"could not acquire lock on power action after {wait:g} seconds"
                raise PowerError(text) from None
            held = True
        elif not s.lock.locked():
            await s.lock.acquire()
            held = True
        try:
            s.actions.append(action)
            if action == "start":
                if s.state != "offline":
                    raise PowerError("server is running")
                await self._start(s)
            elif action in ("stop", "restart"):
                await self._wait_for_stop(s)
                if action == "restart":
                    await self._start(s)
            else:
                self.set_state(s, "offline")
        finally:
            if held:
                s.lock.release()

    async def _start(self, s: ServerState) -> None:
        self.set_state(s, "starting")
        if s.start_delay is not None:
            self._background(self._running_after(s, s.start_delay))
        await asyncio.sleep(s.start_lock)

    async def _running_after(self, s: ServerState, delay: float) -> None:
        await asyncio.sleep(delay)
        if s.state == "starting":
            self.set_state(s, "running")

    async def _wait_for_stop(self, s: ServerState) -> None:
        if s.state == "offline":
            return
        self.set_state(s, "stopping")
        if s.stop_delay is not None:
            await asyncio.sleep(s.stop_delay)
            if s.state == "stopping":
                self.set_state(s, "offline")
        while s.state != "offline":  # a test (the game) says when
            await asyncio.sleep(0.02)

    def set_state(self, s: ServerState, state: str) -> None:
        """Environment SetState: the state, published as ``status`` to the server's sockets
        (router/websocket/listeners.go)."""
        s.state = state
        for handler in [h for h in self.handlers if h.s is s]:
            self._background(handler.send("status", [state]), quiet=True)

    def _background(self, work: Awaitable[None], quiet: bool = False) -> None:
        async def run() -> None:
            try:
                await work
            except (PowerError, ConnectionError) as exc:
                if not quiet:
                    raise
                self.errors.append(repr(exc))

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            if socket in self.handlers:
                self.handlers.remove(socket)
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
        """SendJson: nothing but a jwt error goes to a socket whose token is not valid, and
        some events only with a permission (issue 19.9)."""
        error = self.token_error()
        if error is not None:
            await self.unsafe_send("jwt error", [error])
            return
        assert self.claims is not None
        needs = _EVENT_PERMISSIONS.get(event)
        if event.startswith("backup completed"):
            needs = "backup.read"
        if needs is None or self.wings.may(self.claims, needs):
            await self.unsafe_send(event, args)

    async def send_error(self, refused: _Refused, detail: str = "") -> None:
        """SendErrorJson: a JWT error's text, or a daemon error: generic, or ``detail`` (the
        error's text) for a token with admin.websocket.errors."""
        if refused.text is not None:
            await self.unsafe_send("jwt error", [refused.text])
            return
        text = "an unexpected error was encountered while handling this request"
        if detail and self.claims is not None and self.wings.may(self.claims, _ERRORS):
            text = detail
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
                self.wings.console.listen(self.server, self.ws, claims)  # the section below
                self.wings.handlers.append(self)  # registerListenerEvents (issue 19.9)
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
            # Issue 19.9: HandlePowerAction without a wait, in this message's goroutine (the
            # socket reads on); its state changes reach every socket as "status".
            self.wings._background(self._power(action))
        elif event == "send command":
            assert self.claims is not None
            if not self.wings.may(self.claims, "control.console"):
                return
            # The stand-in's game echoes every command (Wings forwards the server's output).
            self.s.commands.append("".join(args))
            await self.send("console output", ["".join(args)])
        elif event == "send stats":
            await self.send("stats", [json.dumps({"state": self.s.state})])

    async def _power(self, action: str) -> None:
        try:
            await self.wings.power_action(self.s, action)
        except PowerLocked:
            text = (
                "another power action is currently being processed for this server, "
                "please try again later"
            )
            await self.send("daemon error", [f"Error Event [{uuid.uuid4()}]: {text}"])
        except PowerError as exc:
            await self.send_error(_Refused(None), str(exc))


# -- Wings' rules, issue 19.9 ------------------------------------------------------------------

# router/websocket/websocket.go SendJson: events only some tokens receive.
_EVENT_PERMISSIONS = {
    "install output": "admin.websocket.install",
    "transfer logs": "admin.websocket.transfer",
}
_ERRORS = "admin.websocket.errors"
MULTIPART_MEMORY = 32 << 20  # gin's defaultMultipartMemory (Engine.MaxMultipartMemory)
CONTINUE_OWED = web.RequestKey("continue_owed", bool)


class PowerError(Exception):
    """HandlePowerAction failed (server/errors.go, server/power.go)."""


class PowerLocked(PowerError):
    """system.ErrLockerLocked: another power action holds the lock."""


def _captured() -> dict[str, str]:
    """router/middleware/request_error.go Abort: the body of an error Wings captured (500)."""
    return {
        "error": "An unexpected error was encountered while processing this request",
        "request_id": str(uuid.uuid4()),
    }


def _wings_500() -> web.HTTPInternalServerError:
    return web.HTTPInternalServerError(
        text=json.dumps(_captured()), content_type="application/json"
    )


def panel_file_token(server: str, scope: str, **claims: Any) -> str:
    """A file link's JWT as the panels sign it (Pterodactyl NodeJWTService: iss, ``aud`` a
    list, jti, iat, nbf 5 minutes back, exp, user_uuid, unique_id; Pelican also ``scope``):
    ``scope`` is ``file-download`` or ``file-upload``; a claim given as None is left out."""
    now = int(time.time())
    payload = {
        "iss": "https://panel.example.com",
        "aud": ["https://node.example.com:8080"],
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now - 300,
        "exp": now + 900,
        "server_uuid": server,
        "user_uuid": str(uuid.uuid4()),
        "unique_id": uuid.uuid4().hex[:16],
        "scope": scope,
        **claims,
    }
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None}, NODE_TOKEN, algorithm="HS256"
    )


async def go_expect(request: web.Request) -> web.StreamResponse | None:
    """net/http (server.go readRequest): ``Expect: 100-continue`` from an HTTP/1.1 client with
    a body owes a 100, sent when the handler first reads the body (expectContinueReader);
    any other expectation is a 417 before the handler."""
    expect = request.headers.get("Expect", "").strip().lower()
    if expect == "100-continue":
        if request.version >= (1, 1) and request.body_exists:
            request[CONTINUE_OWED] = True
        return None
    if expect:
        return web.Response(status=417, text="417 Expectation Failed")
    return None


async def go_continue(request: web.Request) -> None:
    """The handler reads the body: the owed 100 goes out first."""
    if request.get(CONTINUE_OWED):
        request[CONTINUE_OWED] = False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def _multipart_boundary(content_type: str) -> bytes | None:
    """mime.ParseMediaType, as far as multipart/form-data's boundary goes."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode()
    return None


@dataclass
class _Part:
    name: str
    filename: str | None
    start: int  # offsets of its content in the body
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


class _BufferedBody:
    """A request body read whole, as Go's ParseMultipartForm reads it: in memory up to
    ``memory`` bytes, the rest in a temporary file."""

    def __init__(self, memory: int) -> None:
        self.memory = memory
        self.buffer = bytearray()
        self.file: Any = None

    def __enter__(self) -> _BufferedBody:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()

    def write(self, chunk: bytes) -> None:
        if self.file is None and len(self.buffer) + len(chunk) > self.memory:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
            self.file.write(self.buffer)
            self.buffer = bytearray()
        if self.file is not None:
            self.file.write(chunk)
        else:
            self.buffer += chunk

    def _view(self) -> Any:
        if self.file is None:
            return memoryview(self.buffer)
        self.file.flush()
        return mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)

    def parts(self, boundary: bytes) -> list[_Part]:
        """The parts of a multipart body (mime/multipart), or ValueError."""
        data = self._view()
        raw = bytes(data) if isinstance(data, memoryview) else data
        delimiter = b"--" + boundary
        first = raw.find(delimiter)
        if first < 0:
            raise ValueError("no boundary")
        found: list[_Part] = []
        at = first + len(delimiter)
        while True:
            if raw[at : at + 2] == b"--":
                return found
            if raw[at : at + 2] != b"\r\n":
                raise ValueError("bad delimiter line")
            head_end = raw.find(b"\r\n\r\n", at + 2)
            if head_end < 0:
                raise ValueError("no part header")
            head = bytes(raw[at + 2 : head_end]).decode("utf-8", "replace")
            start = head_end + 4
            end = raw.find(b"\r\n" + delimiter, start)
            if end < 0:
                raise ValueError("no closing boundary")
            name, filename = _disposition(head)
            found.append(_Part(name, filename, start, end))
            at = end + 2 + len(delimiter)

    def save(self, part: _Part, target: Path) -> dict[str, Any]:
        """Filesystem().Write of the part's content."""
        data = self._view()
        content = data[part.start : part.end]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}


def _disposition(head: str) -> tuple[str, str | None]:
    name, filename = "", None
    for line in head.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        for param in value.split(";")[1:]:
            k, _, v = param.strip().partition("=")
            if k == "name":
                name = v.strip('"')
            elif k == "filename":
                filename = os.path.basename(v.strip('"'))
    return name, filename


async def _spool(part: BodyPartReader, f: Any) -> str:
    """The part's bytes into ``f``; their sha256 (hex)."""
    digest = hashlib.sha256()
    while chunk := await part.read_chunk(CHUNK):
        digest.update(chunk)
        await asyncio.to_thread(f.write, chunk)
    return digest.hexdigest()


def _extract(f: Any, dest: Path) -> None:
    """filesystem.ExtractStreamUnsafe of a transfer's .tar.gz into the server's directory."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=f, mode="r:gz") as tar:
        tar.extractall(dest, filter="data")



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


# == The file manager's routes (issue 21) =======================================================
#
# router/router_server_files.go, each handler below naming the function it follows; paths are
# resolved as server/filesystem's SafePath does (joined to the server's root, ``..`` stopping
# at it, symlinks leaving it refused: 404 "The requested resources was not found on the
# system.", router/middleware/request_error.go). Hooked in by one line in ``start``.

_FS_NOT_FOUND = "The requested resources was not found on the system."
# The structs each handler binds its body into (router_server_files.go).
RENAME_FIELDS = {"root": "string", "files": {"to": "string", "from": "string"}}
WRITER_FIELDS: dict[str, dict[str, Any]] = {
    "delete": {"root": "string", "files": "[]string"},
    "create-directory": {"name": "string", "path": "string"},
    "chmod": {"root": "string", "files": {"file": "string", "mode": "string"}},
    "compress": {"root": "string", "files": "[]string"},
    "decompress": {"root": "string", "file": "string"},
}


def _http(status: int, body: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 422: web.HTTPUnprocessableEntity}
    return cls[status](text=body, content_type="application/json")


def _go_mode(st: os.stat_result) -> str:
    """fs.FileMode.String()."""
    import stat as _stat

    kind = "d" if _stat.S_ISDIR(st.st_mode) else "L" if _stat.S_ISLNK(st.st_mode) else "-"
    bits = "".join(c if st.st_mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return kind + bits


def _go_time(seconds: float) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(int(seconds)))
    return text[:-5] + "Z" if text.endswith("+0000") else text[:-2] + ":" + text[-2:]


def add_file_routes(wings: WingsStandin, app: web.Application) -> None:
    r = app.router
    base = "/api/servers/{server}/files/"

    def safe(server: str, *parts: str) -> Path:
        """SafePath: the joined path, cleaned at the root, never through a link out of it."""
        root = (wings.root / server).resolve()
        joined = os.path.normpath("/" + "/".join(parts)).lstrip("/")
        path = root / joined
        if joined and not path.parent.resolve().is_relative_to(root):
            raise _http(404, json.dumps({"error": _FS_NOT_FOUND}))
        return path

    async def body_of(request: web.Request, fields: dict[str, Any]) -> dict[str, Any]:
        """gin's BindJSON into the handler's struct (``fields``, as go_struct takes them):
        the first JSON value only, keys matched as encoding/json matches them."""
        await go_continue(request)
        request[RECORD].raw = raw = await request.read()
        try:
            data = go_struct(go_parse(raw, first_value_only=True), fields)
        except GoDecodeError:
            raise _http(400, json.dumps({"error": "Failed to parse the request body."})) from None
        request[RECORD].body = data
        return data

    async def list_directory(request: web.Request) -> web.Response:
        # getServerListDirectory -> filesystem.ListDirectory: lstat of each entry (DirEntry
        # Info), mime "inode/directory" for folders; stat.go's JSON.
        server = request.match_info["server"]
        wings._known(request)
        path = safe(server, request.query.get("directory", ""))
        if not path.is_dir():
            raise _http(404, json.dumps({"error": _FS_NOT_FOUND}))
        out = []
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            is_dir = entry.is_dir(follow_symlinks=False)
            out.append(
                {
                    "name": entry.name,
                    "created": _go_time(st.st_ctime),
                    "modified": _go_time(st.st_mtime),
                    "mode": _go_mode(st),
                    "mode_bits": format(st.st_mode & 0o777, "o"),
                    "size": st.st_size,
                    "directory": is_dir,
                    "file": not is_dir,
                    "symlink": entry.is_symlink(),
                    "mime": "inode/directory" if is_dir else "application/octet-stream",
                }
            )
        return web.json_response(out)

    async def rename(request: web.Request) -> web.Response:
        # putServerRenameFiles: root + from/to each; a missing source is no error; an
        # existing destination is a 400.
        server = request.match_info["server"]
        wings._known(request)
        data = await body_of(request, RENAME_FIELDS)
        files = data["files"] or []
        if not files:
            raise _http(422, json.dumps({"error": "No files to move or rename were provided."}))
        for item in files:
            src = safe(server, data["root"], item["from"])
            dst = safe(server, data["root"], item["to"])
            if not os.path.lexists(src):
                continue
            if os.path.lexists(dst):
                exists = "Cannot move or rename file, destination already exists."
                raise _http(400, json.dumps({"error": exists}))
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
        return web.Response(status=204)

    async def copy(request: web.Request) -> web.Response:
        # postServerCopyFile -> filesystem.Copy: "name copy.ext", "name copy 1.ext", ...
        server = request.match_info["server"]
        wings._known(request)
        data = await body_of(request, {"location": "string"})
        src = safe(server, data["location"])
        if not src.is_file() or src.is_symlink():
            raise _http(404, json.dumps({"error": _FS_NOT_FOUND}))
        ext = os.path.splitext(src.name)[1] if "." in src.name[1:] else ""
        stem = src.name[: len(src.name) - len(ext)]
        if stem.endswith(".tar"):
            stem, ext = stem[:-4], ".tar" + ext
        for i in range(51):
            name = f"{stem} copy{'' if i == 0 else f' {i}'}{ext}"
            if not os.path.lexists(src.parent / name):
                break
        (src.parent / name).write_bytes(src.read_bytes())
        return web.Response(status=204)

    def writer(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        # postServerDeleteFiles, postServerCreateDirectory, postServerChmodFile,
        # postServerCompressFiles, postServerDecompressFiles: each acts on its paths.
        async def handler(request: web.Request) -> web.Response:
            server = request.match_info["server"]
            wings._known(request)
            data = await body_of(request, WRITER_FIELDS[kind])
            root = data.get("root", "")
            if kind == "delete":
                for f in data["files"] or []:
                    p = safe(server, root, f)
                    if p.is_dir() and not p.is_symlink():
                        import shutil

                        shutil.rmtree(p)
                    elif os.path.lexists(p):
                        p.unlink()
            elif kind == "create-directory":
                safe(server, data["path"], data["name"]).mkdir(parents=True)
            elif kind == "chmod":
                for f in data["files"] or []:
                    safe(server, root, f["file"]).chmod(int(f["mode"], 8))
            elif kind == "compress":
                out = safe(server, root, f"archive-{int(time.time())}.tar.gz")
                with tarfile.open(out, "w:gz") as tar:
                    for f in data["files"] or []:
                        tar.add(safe(server, root, f), arcname=f)
                return web.json_response({"name": out.name})
            elif kind == "decompress":
                src = safe(server, root, data["file"])
                with tarfile.open(src, "r:*") as tar:
                    tar.extractall(safe(server, root), filter="data")
            return web.Response(status=204)

        return handler

    r.add_get(base + "list-directory", list_directory)
    r.add_put(base + "rename", rename)
    r.add_post(base + "copy", copy)
    for kind in ("delete", "create-directory", "chmod", "compress", "decompress"):
        r.add_post(base + kind, writer(kind))
