"""The connection guards of issue 14 (item 5 and a minor), against the real daemon process over
raw sockets: deadlines on a request's header and on a body that stops arriving, the idle
keep-alive deadline, a cap of connections per client address (counted until a request head is
complete, TLS handshake included: issue 18 item 5, issue 19 item 5), the dual-stack listener
(issue 19 item 6), a deadline for the websocket's ``auth``, and aiohttp's parser refusals
answered as JSON that echoes nothing of the request.

Each test runs its own daemon with short deadlines. Waits are hang detectors (15 s): no test
asserts how long anything took."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import aiohttp.web
import pytest
import yaml

from bench.tlscert import self_signed_certificate
from tests.support.daemon_helpers import (
    NODE_TOKEN,
    DaemonProcess,
    Node,
    new_uuid,
    sign,
    wait_until,
    ws_claims,
)
from tests.support.wings_standin import WingsStandin
from wingsbak.config import ApiConfig
from wingsbak.http.server import start_server

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


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Slow: a"  # a header that never ends


async def test_slow_connections_over_the_cap_get_429_whole_requests_are_served(daemon_process):
    """The cap counts connections still sending their request head (issue 19, item 5): one
    address's slow connections over it are answered 429 and closed, while its requests that
    arrive whole are served, in the same burst."""
    proc = await start_guarded(daemon_process, max_connections_per_address=4, header_timeout=30.0)
    held = [await connect(proc) for _ in range(4)]  # silent: each awaits its head, counted
    try:
        slow = [exchange(proc, SLOW_HEAD if i % 2 else b"") for i in range(20)]
        whole = [exchange(proc, get("/healthz", "Connection: close")) for _ in range(20)]
        answers = await asyncio.gather(*slow, *whole)
        for raw in answers[:20]:  # also for a client that sent bytes: no reset lost the 429
            status, headers, body = parse_answer(raw)
            assert status == 429 and headers["retry-after"] == "1", raw[:300]
            assert "Too many connections" in json_error(status, headers, body)
        assert [parse_answer(raw)[0] for raw in answers[20:]] == [200] * 20
        # Another client is served meanwhile, and the four within the cap were kept.
        raw = await exchange(proc, get("/healthz", "Connection: close"), OTHER_CLIENT)
        assert parse_answer(raw)[0] == 200
        for reader, writer in held:
            writer.write(get("/healthz"))
            assert (await read_answer(reader))[0] == 200
    finally:
        for _, writer in held:
            writer.close()
    assert "too_many_connections" in log_of(proc)


async def test_a_keep_alive_connection_counts_again_while_its_next_head_arrives(daemon_process):
    """Served and idle, a connection is not counted; the next request's slow head is."""
    proc = await start_guarded(daemon_process, max_connections_per_address=2, header_timeout=30.0)
    conns = [await connect(proc) for _ in range(3)]
    try:
        for reader, writer in conns:
            writer.write(get("/healthz"))
            assert (await read_answer(reader))[0] == 200
        for _, writer in conns:  # three idle connections, none counted: all begin again
            writer.write(SLOW_HEAD)
        reads = [asyncio.create_task(read_answer(reader)) for reader, _ in conns]
        done, _ = await asyncio.wait(reads, timeout=HANG, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and next(iter(done)).result()[0] == 429
        for (_, writer), read in zip(conns, reads, strict=True):
            if read not in done:  # the two within the cap end their heads and are served
                writer.write(b"\r\n\r\n")
                assert (await read)[0] == 200
    finally:
        for _, writer in conns:
            writer.close()


async def test_a_trusted_proxy_is_not_counted(daemon_process):
    """``api.trusted_proxies`` (an address or CIDR, Wings' key): its connections are never
    counted; on a dual-stack listener its IPv4 address arrives mapped and still matches."""
    proc = await start_guarded(
        daemon_process,
        max_connections_per_address=4,
        header_timeout=30.0,
        host="0.0.0.0",
        trusted_proxies=[f"{OTHER_CLIENT}/32", "2001:db8::/32"],
    )
    proxied = [await connect(proc, OTHER_CLIENT) for _ in range(20)]  # silent
    try:
        # The untrusted address's fifth silent connection, made after all twenty: once it has
        # its 429, the twenty have had the same grace and longer.
        others = [await connect(proc) for _ in range(5)]
        fifth_reader, _ = others[-1]
        status, _, _ = parse_answer(await read_to_eof(fifth_reader))
        assert status == 429
        for reader, writer in proxied:
            writer.write(get("/healthz"))
            assert (await read_answer(reader))[0] == 200
        for _, writer in others:
            writer.close()
    finally:
        for _, writer in proxied:
            writer.close()


# -- TLS: counted from the accept, the handshake under header_timeout (issue 18, item 5) -----


async def start_tls(make: Callable[..., DaemonProcess], **api: Any) -> tuple[DaemonProcess, Any]:
    """The daemon process serving https with a self-signed certificate; the client context
    that trusts it. (DaemonProcess.start polls plain http.)"""
    proc = make()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = self_signed_certificate(proc.node.root)
    proc.config["api"].update(ssl={"enabled": True, "cert": str(cert), "key": str(key)}, **api)
    cfg_path = proc.node.root / "cfg.yml"
    cfg_path.write_text(yaml.safe_dump(proc.config), encoding="utf-8")
    with open(proc.log_path, "ab") as log:
        proc.proc = subprocess.Popen(
            [sys.executable, "-m", "wingsbak", "serve", "--config", str(cfg_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=proc.node.root,
            env={**os.environ, "WINGSBAK_LOG_LEVEL": "debug"},
        )
    trust = ssl.create_default_context(cafile=str(cert))
    await wait_until(lambda: "wingsbak_started" in log_of(proc), "the daemon to come up", 20.0)
    return proc, trust


async def https_status(proc: DaemonProcess, trust: Any, local: str | None = None) -> int:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            port_of(proc),
            ssl=trust,
            server_hostname="127.0.0.1",
            local_addr=(local, 0) if local else None,
        ),
        HANG,
    )
    try:
        writer.write(get("/healthz", "Connection: close"))
        return (await read_answer(reader))[0]
    finally:
        writer.close()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def test_silent_tls_connections_over_the_cap_are_closed(daemon_process):
    """Cap 10, a hundred TCP connections that never start their handshake: ninety are
    closed (the first ten are within the cap and keep their header_timeout), and the node's
    own clients get their handshakes meanwhile. Before, all stayed for asyncio's 60 s."""
    proc, trust = await start_tls(
        daemon_process, max_connections_per_address=10, header_timeout=30.0
    )
    conns = [await connect(proc) for _ in range(100)]
    watch = [asyncio.create_task(until_closed(reader)) for reader, _ in conns]
    try:
        await wait_until(
            lambda: sum(t.done() for t in watch) >= 90, "ninety connections to be closed"
        )
        assert await https_status(proc, trust, OTHER_CLIENT) == 200
        kept = [c for c, t in zip(conns, watch, strict=True) if not t.done()]
        assert len(kept) == 10
        # Over the cap, a handshake made in time but no request: the 429 comes over TLS.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port_of(proc), ssl=trust, server_hostname="127.0.0.1"
        )
        try:
            assert parse_answer(await read_to_eof(reader))[0] == 429
        finally:
            writer.close()
        for task in watch:
            task.cancel()
        for reader, writer in kept:  # alive: each still gets its handshake and its answer
            await asyncio.wait_for(writer.start_tls(trust, server_hostname="127.0.0.1"), HANG)
            writer.write(get("/healthz"))
            assert (await read_answer(reader))[0] == 200
    finally:
        for task in watch:
            task.cancel()
        for _, writer in conns:
            writer.close()
    assert "too_many_connections" in log_of(proc)


async def test_a_tls_handshake_gets_header_timeout(daemon_process):
    proc, trust = await start_tls(daemon_process, header_timeout=1.0)
    reader, writer = await connect(proc)  # never sends its ClientHello
    try:
        assert await asyncio.wait_for(until_closed(reader), HANG) == b""
        assert await https_status(proc, trust) == 200
    finally:
        writer.close()


# -- many clients behind one address (issue 19, item 5) ----------------------------------------


async def test_two_hundred_consoles_from_one_address_all_open_and_work(
    daemon_process, node: Node, panel
):
    """The defaults (64 connections per address), wingsbak in front of the Wings stand-in: 200
    console websockets from one address, 20 on each of 10 servers (Pelican Wings refuses a
    server's 31st), opened in one burst as consoles reconnect after a restart. Each is
    authenticated and answers a command; then the address is still served."""
    wings = WingsStandin(node.data)
    await wings.start()
    try:
        proc = daemon_process(remote=panel.url)
        proc.config["api"]["upstream"] = wings.url
        await proc.start()
        servers = [new_uuid() for _ in range(10)]
        for server in servers:
            wings.server(server, state="running")
        connector = aiohttp.TCPConnector(limit=0)  # the default pool would hold 100 at most
        async with aiohttp.ClientSession(connector=connector) as session:

            async def console(server: str) -> aiohttp.ClientWebSocketResponse:
                ws = await session.ws_connect(
                    f"{proc.url}/api/servers/{server}/ws", headers={"Origin": panel.url}
                )
                # control.console: Wings runs "send command" only with it (websocket.go)
                claims = ws_claims(server, permissions=["websocket.connect", "control.console"])
                await ws.send_json({"event": "auth", "args": [sign(claims)]})
                await event(ws, "status")
                return ws

            sockets = await asyncio.gather(*(console(s) for s in servers for _ in range(20)))
            assert len(sockets) == 200
            for i, ws in enumerate(sockets):
                await ws.send_json({"event": "send command", "args": [f"say {i}"]})
            for i, ws in enumerate(sockets):
                await event(ws, "console output", f"say {i}")
            async with session.get(f"{proc.url}/healthz") as r:
                assert r.status == 200
            assert all(not ws.closed for ws in sockets)
            await asyncio.gather(*(ws.close() for ws in sockets))
    finally:
        await wings.stop()
    assert "connection_refused" not in log_of(proc)


async def event(ws: aiohttp.ClientWebSocketResponse, name: str, arg: str | None = None) -> None:
    """Read until the event ``name`` (with ``arg``, if given)."""
    while True:
        msg = await ws.receive(HANG)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        doc = json.loads(msg.data)
        if doc["event"] == name and (arg is None or doc["args"] == [arg]):
            return


# -- IPv6 (issue 19, item 6) -------------------------------------------------------------------


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
async def test_a_wildcard_host_takes_ipv4_and_ipv6(daemon_process, host: str):
    """As Go's listener under Wings: ``0.0.0.0`` (and ``::``) takes both families."""
    proc = await start_guarded(daemon_process, host=host)  # start() polls 127.0.0.1
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (the IPv4 half passed)")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://[::1]:{port_of(proc)}/healthz") as r:
            assert r.status == 200
        async with session.get(f"http://127.0.0.1:{port_of(proc)}/healthz") as r:
            assert r.status == 200


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
            event = json.loads(msg.data)
            if event["event"] == "backup completed":
                assert json.loads(event["args"][0])["uuid"] == backup
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


async def test_a_stopped_listener_frees_its_port_before_its_stop_returns() -> None:
    """A listener moved by a node-settings save (wingsbak/wings/identity.py ``_rebind``) stops
    the old site and listens again on the same port at once: the old socket must be closed
    when the stop returns, not on a later turn of the loop (else the new bind fails, or a
    connection waits in a backlog nobody accepts from)."""
    app = aiohttp.web.Application()
    runner = await start_server(app, ApiConfig(host="127.0.0.1", port=0))
    try:
        (site,) = runner.sites
        port = runner.addresses[0][1]
        await site.stop()
        again = socket.create_server(("127.0.0.1", port))  # EADDRINUSE while it is open
        again.close()
    finally:
        await runner.cleanup()
