"""The download pump (wingsbak/http/sendfile.py): big bodies, keep-alive after a body, a
client that goes away mid-body, and more downloads at once than pump threads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import aiohttp

from tests.support.daemon_helpers import Daemon, Node, Panel, download_claims, new_uuid, sign
from wingsbak.http import sendfile


async def big_backup(daemon: Daemon, node: Node, panel: Panel) -> tuple[str, str, bytes]:
    server = node.server({"region.mca": os.urandom(24 * 1024 * 1024)})
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    return server, backup, node.archive(server, backup).read_bytes()


async def test_body_headers_and_keep_alive(daemon: Daemon, node: Node, panel: Panel) -> None:
    server, backup, data = await big_backup(daemon, node, panel)
    # One connection: a full body, then a Range and an API call on the same keep-alive socket.
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as http:
        url = f"{daemon.url}/download/backup"
        async with http.get(url, params={"token": sign(download_claims(server, backup))}) as r:
            assert r.status == 200
            assert hashlib.sha1(await r.read()).digest() == hashlib.sha1(data).digest()
        token = sign(download_claims(server, backup))
        async with http.get(url, params={"token": token}, headers={"Range": "bytes=1000-"}) as r:
            assert r.status == 206
            assert await r.read() == data[1000:]
        async with http.get(f"{daemon.url}/healthz") as r:
            assert r.status == 200
    assert sendfile._busy == 0


async def test_client_leaving_mid_body_frees_the_pump(
    daemon: Daemon, node: Node, panel: Panel
) -> None:
    server, backup, data = await big_backup(daemon, node, panel)
    host, port = daemon.url.removeprefix("http://").split(":")
    token = sign(download_claims(server, backup))
    for _ in range(3):
        reader, writer = await asyncio.open_connection(host, int(port))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(f"GET /download/backup?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await reader.read(4096)
        writer.transport.abort()  # gone with most of the body unsent
        token = sign(download_claims(server, backup))
    for _ in range(200):
        if sendfile._busy == 0:
            break
        await asyncio.sleep(0.05)
    assert sendfile._busy == 0
    async with daemon.request("GET", "/download/backup", params={"token": token}) as r:
        assert r.status == 200
        assert await r.read() == data


async def test_more_downloads_than_pump_threads(daemon: Daemon, node: Node, panel: Panel) -> None:
    server, backup, data = await big_backup(daemon, node, panel)
    want = hashlib.sha1(data).hexdigest()

    async def fetch(http: aiohttp.ClientSession) -> str:
        token = sign(download_claims(server, backup))
        async with http.get(f"{daemon.url}/download/backup", params={"token": token}) as r:
            assert r.status == 200
            return hashlib.sha1(await r.read()).hexdigest()

    async with aiohttp.ClientSession() as http:
        got = await asyncio.gather(*(fetch(http) for _ in range(sendfile.PUMP_THREADS + 4)))
    assert got == [want] * (sendfile.PUMP_THREADS + 4)
    assert sendfile._busy == 0


async def test_stopping_frees_a_pump_held_by_a_client_that_reads_nothing(
    daemon: Daemon, node: Node, panel: Panel
) -> None:
    server, backup, _data = await big_backup(daemon, node, panel)
    host, port = daemon.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    token = sign(download_claims(server, backup))
    writer.write(f"GET /download/backup?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await reader.read(1024)  # headers and a little body, then nothing more is read
    for _ in range(100):
        if sendfile._active:
            break
        await asyncio.sleep(0.02)
    assert sendfile._busy == 1 and len(sendfile._active) == 1
    # What the daemon's shutdown does; without it the pump would wait for the stall timeout.
    assert sendfile.stop_pumps() == 1
    for _ in range(250):
        if sendfile._busy == 0:
            break
        await asyncio.sleep(0.02)
    assert sendfile._busy == 0 and not sendfile._active
    writer.transport.abort()
