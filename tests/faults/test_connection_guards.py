"""The connection guards of issue 14 (item 5 and a minor), against the real daemon process over
raw sockets: deadlines on a request's header and on a body that stops arriving, the idle
keep-alive deadline, a cap of connections per client address, a deadline for the websocket's
``auth``, and aiohttp's parser refusals answered as JSON that echoes nothing of the request.

Each test runs its own daemon with short deadlines. Waits are hang detectors (15 s): no test
asserts how long anything took."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from daemon_helpers import NODE_TOKEN, DaemonProcess, Node, new_uuid, sign, wait_until, ws_claims

HANG = 15.0  # seconds after which a wait is a hang, not a slow answer
OTHER_CLIENT = "127.0.0.2"  # another client address on the loopback network


async def start_guarded(make: Callable[..., DaemonProcess], **api: Any) -> DaemonProcess:
    proc = make()
    proc.config["api"].update(api)
    await proc.start()
    return proc


def log_of(proc: DaemonProcess) -> str:
    return proc.log_path.read_text(encoding="utf-8", errors="replace")


def port_of(proc: DaemonProcess) -> int:
    return int(proc.config["api"]["port"])


async def connect(
    proc: DaemonProcess, local: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", port_of(proc), local_addr=(local, 0) if local else None
    )


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """All the daemon sends until it closes the connection (a hang raises TimeoutError)."""
    return await asyncio.wait_for(reader.read(), HANG)


async def exchange(proc: DaemonProcess, data: bytes, local: str | None = None) -> bytes:
    reader, writer = await connect(proc, local)
    try:
        writer.write(data)
        await writer.drain()
        return await read_to_eof(reader)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length, on a connection that may stay open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
    status, headers = parse_head(head)
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), HANG)
    return status, headers, body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:300]
    status, headers = parse_head(head)
    return status, headers, body


def json_error(status: int, headers: dict[str, str], body: bytes) -> str:
    """The sentence of a JSON error answer (``{"error": "..."}`` and nothing else)."""
    assert headers.get("content-type", "").startswith("application/json"), (status, headers)
    doc = json.loads(body)
    assert isinstance(doc, dict) and list(doc) == ["error"] and doc["error"], doc
    return str(doc["error"])


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: node", *extra, "", ""]).encode()


def backup_request(server: str, body: bytes) -> bytes:
    head = [
        f"POST /api/servers/{server}/backup HTTP/1.1",
        "Host: node",
        f"Authorization: Bearer {NODE_TOKEN}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(head).encode()


# -- request header --------------------------------------------------------------------------


async def test_an_unfinished_header_is_answered_408_and_closed(daemon_process):
    proc = await start_guarded(daemon_process, header_timeout=1.0)
    slow = [await connect(proc) for _ in range(20)]
    for _, writer in slow:  # the header never ends: the slowloris of the issue
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Slow: a")
    silent_reader, silent_writer = await connect(proc)  # never sends a byte
    for reader, writer in slow:
        status, headers, body = parse_answer(await read_to_eof(reader))
        assert status == 408 and headers["connection"] == "close"
        assert "header" in json_error(status, headers, body)
        writer.close()
    assert await read_to_eof(silent_reader) == b""  # closed: owed no answer
    silent_writer.close()
    assert "request_header_timeout" in log_of(proc)


async def test_keep_alive_waits_for_the_next_request_then_closes_when_idle(daemon_process):
    """The header's clock starts at the next request's first byte, not when the previous answer
    ended; an idle connection is closed after ``api.keepalive_timeout``."""
    proc = await start_guarded(daemon_process, header_timeout=1.0, keepalive_timeout=4.0)
    reader, writer = await connect(proc)
    try:
        writer.write(get("/healthz"))
        assert (await read_answer(reader))[0] == 200
        await asyncio.sleep(2.0)  # idle for longer than header_timeout
        writer.write(get("/healthz"))
        assert (await read_answer(reader))[0] == 200
        assert await read_to_eof(reader) == b""  # idle past keepalive_timeout: closed
    finally:
        writer.close()


# -- request body ----------------------------------------------------------------------------


async def test_a_body_that_stops_is_answered_408_one_that_progresses_is_served(
    daemon_process, node: Node
):
    proc = await start_guarded(daemon_process, body_timeout=2.0)
    server = node.server()
    body = json.dumps({"adapter": "wings", "uuid": new_uuid(), "ignore": ""}).encode()
    # Stops after 10 bytes: refused with a 408, no backup started.
    raw = await exchange(proc, backup_request(server, body) + body[:10])
    status, headers, answer = parse_answer(raw)
    assert status == 408, raw[:300]
    assert "body" in json_error(status, headers, answer)
    assert not list(node.backups.rglob("*.tar.gz"))
    # The same body a few bytes at a time, for longer than body_timeout in all: served.
    reader, writer = await connect(proc)
    try:
        writer.write(backup_request(server, body))
        for i in range(0, len(body), 4):
            writer.write(body[i : i + 4])
            await writer.drain()
            await asyncio.sleep(0.2)
        status, _, answer = parse_answer(await read_to_eof(reader))
    finally:
        writer.close()
    assert status == 202, answer
    assert "request_body_timeout" in log_of(proc)


# -- connections per address -----------------------------------------------------------------


async def test_connections_over_the_cap_per_address_are_refused_with_429(daemon_process):
    proc = await start_guarded(daemon_process, max_connections_per_address=4, header_timeout=30.0)
    held = [await connect(proc) for _ in range(4)]
    try:
        # The next hundred from the same address: a 429 each, at once, and closed (also for a
        # client that sent its request before reading: the answer is not lost to a reset).
        for i in range(100):
            raw = await exchange(proc, get("/healthz") if i % 2 else b"")
            status, headers, body = parse_answer(raw)
            assert status == 429 and headers["retry-after"] == "1", raw[:300]
            assert "Too many connections" in json_error(status, headers, body)
        # Another client is served meanwhile.
        raw = await exchange(proc, get("/healthz", "Connection: close"), OTHER_CLIENT)
        assert parse_answer(raw)[0] == 200
    finally:
        for _, writer in held:
            writer.close()

    async def served_again() -> bool:
        raw = await exchange(proc, get("/healthz", "Connection: close"))
        return parse_answer(raw)[0] == 200

    await wait_until(served_again, "a connection from the first address to be served again")
    assert "too_many_connections" in log_of(proc)


# -- websocket -------------------------------------------------------------------------------


async def test_a_websocket_without_a_successful_auth_is_closed(daemon_process, node: Node):
    proc = await start_guarded(
        daemon_process, websocket_auth_timeout=1.0, header_timeout=1.0, body_timeout=1.0
    )
    server = node.server()
    url = f"{proc.url}/api/servers/{server}/ws"
    async with aiohttp.ClientSession() as session:
        silent = await session.ws_connect(url)
        wrong = await session.ws_connect(url)
        await wrong.send_json({"event": "auth", "args": ["not-a-token"]})
        authed = await session.ws_connect(url)
        await authed.send_json({"event": "auth", "args": [sign(ws_claims(server))]})
        assert json.loads((await authed.receive(HANG)).data)["event"] == "auth success"
        for ws in (silent, wrong):
            msg = await ws.receive(HANG)
            while msg.type == aiohttp.WSMsgType.TEXT:  # the jwt error of the wrong token
                msg = await ws.receive(HANG)
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            assert msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION and "auth" in msg.extra
        # The authenticated socket outlives every deadline and still gets its events.
        await asyncio.sleep(2.0)
        backup = new_uuid()
        assert await proc.post_backup(server, backup) == 202
        while True:
            msg = await authed.receive(HANG)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            if json.loads(msg.data)["event"] == f"backup completed:{backup}":
                break
        await authed.close()
    assert "websocket_auth_timeout" in log_of(proc)


# -- aiohttp's parser refusals ---------------------------------------------------------------

SECRET = "secret-0123456789abcdef"


async def test_parser_refusals_are_json_and_echo_nothing_of_the_request(daemon_process):
    proc = await start_guarded(daemon_process)
    target = f"/download/backup?token={SECRET}"
    many_headers = [f"X-H{i}: {SECRET}" for i in range(200)]
    cases: list[tuple[bytes, int]] = [
        (get(target + "\x00"), 400),  # a NUL in the target
        (get(target).replace(b"GET", b"G<T", 1), 400),  # no method
        (get(target, f"Bad Header: {SECRET}"), 400),  # a space in a header name
        (get(target, f"X-A: {SECRET}\x00"), 400),  # a NUL in a header value
        (get(target, "Content-Length: 1", "Content-Length: 2"), 400),
        (get(target + "a" * 9000), 431),  # the request line too long
        (get(target, f"X-A: {SECRET}" + "a" * 9000), 431),  # a header field too long
        (get(target, *many_headers), 431),
        (f"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03{SECRET}".encode(), 400),  # TLS hello
    ]
    for request, expected in cases:
        raw = await exchange(proc, request)
        status, headers, body = parse_answer(raw)
        assert status == expected, (request[:60], raw[:300])
        json_error(status, headers, body)
        assert SECRET.encode() not in raw and b"download/backup" not in raw, raw
    assert SECRET not in log_of(proc)
