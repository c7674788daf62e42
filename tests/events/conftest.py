"""Fixtures of the event and metrics tests: the real daemon in-process on a free port, a real
recording panel, websocket clients (aiohttp's, and a raw one that stops reading) and JWTs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType, web

from wingsbak.config import Config, parse_config, prepare_directories
from wingsbak.http.app import create_app

NODE_TOKEN = "events-node-token-" + "0123456789abcdef" * 3
TOKEN_ID = "events-token-id"


def new_uuid() -> str:
    return str(uuid.uuid4())


def bearer(token: str = NODE_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the panel -------------------------------------------------------------------------------


@dataclass
class Panel:
    """A real HTTP server recording every request; answers ``status`` (204, or e.g. 500)."""

    status: int = 204
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append((request.method, request.path, body))
        if self.status == 204:
            return web.Response(status=204)
        return web.json_response({"errors": [{"code": "Fail"}]}, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reports(self, backup: str, restore: bool = False) -> list[Any]:
        """Bodies of the reports about ``backup`` (answered with 204 or not)."""
        path = f"/api/remote/backups/{backup}" + ("/restore" if restore else "")
        return [body for method, p, body in self.requests if method == "POST" and p == path]

    async def wait_report(self, backup: str, restore: bool = False, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while not self.reports(backup, restore):
            if time.monotonic() >= deadline:  # a hang, reported as such
                raise TimeoutError(f"no report of {backup}: {self.requests!r}")
            await asyncio.sleep(0.02)
        return self.reports(backup, restore)[0]


@pytest.fixture
async def panel() -> AsyncIterator[Panel]:
    p = Panel()
    await p.start()
    yield p
    await p.stop()


# -- the node and the daemon -----------------------------------------------------------------


@dataclass
class Node:
    data: Path
    backups: Path

    def server(self, files: dict[str, bytes] | None = None) -> str:
        server = new_uuid()
        base = self.data / server
        base.mkdir(parents=True)
        for rel, content in (files or {"server.properties": b"motd=hello\n"}).items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return server

    def random_server(self, size: int, files: int = 6) -> str:
        """``size`` bytes of incompressible data in ``files`` files."""
        per = size // files
        return self.server({f"world/region-{i}.mca": os.urandom(per) for i in range(files)})

    def archive(self, server: str, backup: str) -> Path:
        return self.backups / server / f"backup-{backup}.tar.gz"


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "data", tmp_path / "backups")


@dataclass
class Daemon:
    url: str
    cfg: Config
    app: web.Application
    session: aiohttp.ClientSession

    async def post_backup(self, server: str, backup: str, adapter: str = "wings") -> None:
        async with self.session.post(
            f"{self.url}/api/servers/{server}/backup",
            json={"adapter": adapter, "uuid": backup, "ignore": ""},
            headers=bearer(),
        ) as r:
            assert r.status == 202, await r.text()

    async def post_restore(self, server: str, backup: str) -> None:
        async with self.session.post(
            f"{self.url}/api/servers/{server}/backup/{backup}/restore",
            json={"adapter": "wings", "truncate_directory": False},
            headers=bearer(),
        ) as r:
            assert r.status == 202, await r.text()

    async def jobs(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/api/system", headers=bearer()) as r:
            assert r.status == 200, await r.text()
            jobs: dict[str, Any] = (await r.json())["jobs"]
            return jobs


@pytest.fixture
async def start_daemon(node: Node, panel: Panel) -> AsyncIterator[Callable[..., Any]]:
    """``await start_daemon(remote=..., api={...}, **system.backups)`` -> a running daemon.

    Depends on ``panel`` so that the panel outlives the daemons (their last reports land)."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(remote: str = "", api: dict[str, Any] | None = None, **backups: Any) -> Daemon:
        b: dict[str, Any] = {
            "report_retry_initial": 0.05,
            "report_retry_max": 0.2,
            "shutdown_grace": 0.5,
            **backups,
        }
        raw = {
            "uuid": new_uuid(),
            "token_id": TOKEN_ID,
            "token": NODE_TOKEN,
            "remote": remote,
            "api": {"host": "127.0.0.1", "port": 8080, **(api or {})},
            "system": {"data": str(node.data), "backup_directory": str(node.backups), "backups": b},
        }
        cfg = parse_config(raw)
        prepare_directories(cfg)
        app = create_app(cfg)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Daemon(f"http://{host}:{port}", cfg, app, session)

    yield start
    for s in sessions:
        await s.close()
    for r in reversed(runners):
        await r.cleanup()


# -- JWTs ------------------------------------------------------------------------------------


def ws_claims(server: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "server_uuid": server,
        "user_uuid": new_uuid(),
        "permissions": ["websocket.connect", "backup.read"],
        "iat": now,
        "exp": now + 600,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: str = NODE_TOKEN) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


@pytest.fixture
def ws_token() -> Callable[..., str]:
    """``ws_token(server, key=..., **claims)``: a signed websocket JWT (``None`` drops a claim)."""

    def make(server: str, key: str = NODE_TOKEN, **over: Any) -> str:
        return sign(ws_claims(server, **over), key)

    return make


@pytest.fixture
def unsigned_token() -> Callable[..., str]:
    def make(server: str, **over: Any) -> str:
        return unsigned(ws_claims(server, **over))

    return make


# -- websocket clients -----------------------------------------------------------------------


class WsClient:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send_auth(self, token: str) -> None:
        await self.ws.send_json({"event": "auth", "args": [token]})

    async def next(self, timeout: float = 20.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != WSMsgType.TEXT:
            raise AssertionError(f"the socket ended instead of sending an event: {msg!r}")
        data: dict[str, Any] = json.loads(msg.data)
        assert set(data) <= {"event", "args"}, data
        return data

    async def auth(self, token: str) -> dict[str, Any]:
        await self.send_auth(token)
        return await self.next()

    async def until(self, name: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every event up to and including the first one called ``name``."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {name!r} within {timeout} s; got {seen!r}"
            seen.append(await self.next(left))
            if seen[-1]["event"] == name:
                return seen


@pytest.fixture
async def open_ws() -> AsyncIterator[Callable[..., Any]]:
    """``await open_ws(daemon, server)`` -> a connected, not yet authenticated client."""
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def connect(daemon: Daemon, server: str) -> WsClient:
        ws = await daemon.session.ws_connect(f"{daemon.url}/api/servers/{server}/ws")
        sockets.append(ws)
        return WsClient(ws)

    yield connect
    for ws in sockets:
        await ws.close()


def _client_frame(text: str) -> bytes:
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    # FIN + text opcode; masked, with a 7-bit or 16-bit length.
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    head = bytes([0x81]) + length
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@dataclass
class RawWs:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read_text(self) -> str:
        head = await self.reader.readexactly(2)
        assert head[0] & 0x0F == 0x1, f"not a text frame: {head!r}"
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return (await self.reader.readexactly(n)).decode()


@pytest.fixture
async def raw_ws() -> AsyncIterator[Callable[..., Any]]:
    """``await raw_ws(daemon, server, token)``: a hand-made websocket client with a tiny
    receive buffer that authenticates, reads the answer, and then reads nothing more."""
    made: list[RawWs] = []

    async def connect(daemon: Daemon, server: str, token: str) -> str:
        host, port = daemon.url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        raw = RawWs(reader, writer)
        made.append(raw)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /api/servers/{server}/ws HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(_client_frame(json.dumps({"event": "auth", "args": [token]})))
        return await raw.read_text()

    yield connect
    for raw in made:
        raw.writer.close()
