"""Fixtures of the event and metrics tests: the real daemon in-process on a free port and a
real recording panel (tests/support/daemon_fixtures.py, registered by tests/conftest.py),
websocket clients (aiohttp's, and a raw one that stops reading)
and JWTs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.support.daemon_helpers import NODE_TOKEN, Daemon, sign, unsigned, ws_claims

# -- JWTs ------------------------------------------------------------------------------------


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
            if left <= 0:  # a hang, reported as such
                raise TimeoutError(f"no {name!r} within {timeout} s; got {seen!r}")
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
