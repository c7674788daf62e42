"""Client messages of the event socket that are not ``{"event": name, "args": [string]}``, and
what the error middleware does when a handler fails after its answer has begun (an upgraded
websocket, a body partly sent): it must not write an HTTP answer into the connection."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from wingsbak.http.middleware import errors_middleware


@pytest.mark.parametrize(
    "args",
    [{"x": 1}, 7, "a.b.c", [7], [None], [["nested"]], None],
    ids=["object", "number", "string", "list-of-number", "list-of-null", "nested", "null"],
)
async def test_auth_without_a_list_of_strings_is_a_jwt_error(
    start_daemon, panel, node, open_ws, ws_token, args, capfd
):
    daemon = await start_daemon(remote=panel.url)
    server = node.server()
    client = await open_ws(daemon, server)
    await client.ws.send_str(json.dumps({"event": "auth", "args": args}))
    got = await client.next()
    assert got["event"] == "jwt error", got
    # The socket is still the event socket: a good token is taken.
    assert (await client.auth(ws_token(server)))["event"] == "auth success"
    out = capfd.readouterr()
    assert "request_failed" not in out.out + out.err


async def test_messages_of_another_shape_are_ignored(
    start_daemon, panel, node, open_ws, ws_token, capfd
):
    daemon = await start_daemon(remote=panel.url)
    server = node.server()
    client = await open_ws(daemon, server)
    for text in [
        "not json",
        "[1, 2]",
        "7",
        "null",
        '"auth"',
        '{"event": 5, "args": ["x"]}',
        '{"event": ["auth"], "args": ["x"]}',
        '{"args": ["x"]}',
        '{"event": "send logs", "args": {"a": 1}}',
        '{"event": "send command", "args": 7}',
        "[" * 5000 + "]" * 5000,
    ]:
        await client.ws.send_str(text)
    await client.ws.send_bytes(b'{"event": "auth", "args": {"x": 1}}')
    # Nothing was answered to any of them (messages keep their order on a socket): the first
    # thing that comes back is the answer to this auth.
    assert (await client.auth(ws_token(server)))["event"] == "auth success"
    out = capfd.readouterr()
    assert "request_failed" not in out.out + out.err


# -- the middleware once an answer has begun ---------------------------------------------------


@pytest.fixture
async def failing_app() -> AsyncIterator[tuple[str, int]]:
    """The daemon's error middleware in front of two handlers that fail after they have begun
    to answer: the ones of the daemon no longer do, so the middleware is checked with these."""

    async def ws_then_fail(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        raise KeyError(0)  # what a malformed message did in the event socket

    async def half_a_body_then_fail(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 100)
        raise RuntimeError("the source broke")

    app = web.Application(middlewares=[errors_middleware])
    app.router.add_get("/ws", ws_then_fail)
    app.router.add_get("/body", half_a_body_then_fail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield host, port
    await runner.cleanup()


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(15):  # the connection must end: a hang raises TimeoutError
        return await reader.read(-1)


def _text_frame(text: str) -> bytes:
    data = text.encode()
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    )


async def test_no_http_answer_is_written_into_an_upgraded_websocket(failing_app, capfd):
    host, port = failing_app
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    writer.write(_text_frame('{"event": "auth", "args": {"x": 1}}'))
    rest = await _read_to_end(reader)
    writer.close()
    assert b"HTTP/1.1" not in rest, rest
    out = capfd.readouterr()
    assert "request_failed_after_answer" in out.out + out.err  # the failure is still logged


async def test_no_http_answer_is_appended_to_a_body_partly_sent(failing_app):
    host, port = failing_app
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /body HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = await _read_to_end(reader)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"x" * 100  # then the connection ends: the client sees a short body
