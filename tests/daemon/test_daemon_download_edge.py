"""GET /download/backup at its edges: the one-time link is spent only by an answer that sends
the archive (HEAD, 304, 412 and 416 leave it usable), a DELETE racing the download, and the
event loop's sendfile path that serves TLS connections."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import threading
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from test_daemon_download import make_backup

from bench.tlscert import self_signed_certificate
from tests.support.daemon_helpers import (
    Daemon,
    Node,
    Panel,
    auth,
    download_claims,
    new_uuid,
    sign,
    wait_until,
)
from wingsbak.appkeys import STORAGE
from wingsbak.config import parse_config, prepare_directories
from wingsbak.daemon import _ssl_context
from wingsbak.daemon import build_app as create_app


async def fetch(daemon: Daemon, token: str, method: str = "GET", **headers: str):
    async with daemon.request(
        method, "/download/backup", params={"token": token}, headers=headers
    ) as r:
        return r.status, r.headers, await r.read()


def http_date(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


async def validators(daemon: Daemon, node: Node, server: str, backup: str):
    """The archive's ETag and Last-Modified (from a HEAD), and its modification time."""
    headers = (await fetch(daemon, sign(download_claims(server, backup)), "HEAD"))[1]
    mtime = node.archive(server, backup).stat().st_mtime
    return headers["ETag"], headers["Last-Modified"], mtime


async def test_head_answers_like_get_and_leaves_the_link_usable(
    daemon: Daemon, node: Node, panel: Panel
):
    server, backup, data = await make_backup(daemon, node, panel)
    token = sign(download_claims(server, backup))
    for _ in range(2):
        status, headers, body = await fetch(daemon, token, "HEAD")
        assert status == 200 and body == b""
        assert int(headers["Content-Length"]) == len(data)
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"] == f'attachment; filename="backup-{backup}.tar.gz"'
        assert headers["Accept-Ranges"] == "bytes" and headers["ETag"]
    status, _, body = await fetch(daemon, token)
    assert status == 200 and body == data
    # Spent now: a HEAD is refused as the GET would be.
    status, _, body = await fetch(daemon, token, "HEAD")
    assert status == 401


async def test_answers_that_send_nothing_leave_the_link_usable(
    daemon: Daemon, node: Node, panel: Panel
):
    server, backup, data = await make_backup(daemon, node, panel)
    etag, modified, mtime = await validators(daemon, node, server, backup)
    cases: list[tuple[dict[str, str], int]] = [
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": f'"other", {etag}'}, 304),
        ({"If-None-Match": f"W/{etag}"}, 304),  # weak comparison
        ({"If-Modified-Since": modified}, 304),
        ({"If-Match": '"not-this-archive"'}, 412),
        ({"If-Match": f"W/{etag}"}, 412),  # strong comparison
        ({"If-Unmodified-Since": http_date(mtime - 3600)}, 412),
        ({"Range": f"bytes={len(data)}-"}, 416),
        ({"Range": "bytes=99999999-"}, 416),
        ({"Range": "bytes=10-5"}, 416),
    ]
    for headers, expected in cases:
        token = sign(download_claims(server, backup))
        status, answer, body = await fetch(daemon, token, **headers)
        assert status == expected, (headers, status, body[:200])
        if expected == 304:
            assert body == b"" and answer["ETag"] == etag
        else:  # an error answer, as every one of the API
            assert body.startswith(b'{"error": '), body[:200]
        if expected == 416:
            assert answer["Content-Range"] == f"bytes */{len(data)}"
        # The link still downloads the archive, once.
        status, _, body = await fetch(daemon, token)
        assert (status, body) == (200, data), headers
        assert (await fetch(daemon, token, **headers))[0] == 401, headers


async def test_conditions_that_hold_send_the_archive_and_spend_the_link(
    daemon: Daemon, node: Node, panel: Panel
):
    server, backup, data = await make_backup(daemon, node, panel)
    etag, modified, mtime = await validators(daemon, node, server, backup)
    cases: list[tuple[dict[str, str], int, bytes]] = [
        ({"If-Match": etag}, 200, data),
        ({"If-Match": "*"}, 200, data),
        ({"If-None-Match": '"other"'}, 200, data),
        ({"If-Modified-Since": http_date(mtime - 3600)}, 200, data),
        ({"If-Unmodified-Since": modified}, 200, data),
        # If-Range naming this archive: the range; naming another one: all of it.
        ({"Range": "bytes=100-", "If-Range": etag}, 206, data[100:]),
        ({"Range": "bytes=100-", "If-Range": modified}, 206, data[100:]),
        ({"Range": "bytes=100-", "If-Range": '"other"'}, 200, data),
        ({"Range": "bytes=100-", "If-Range": http_date(mtime - 3600)}, 200, data),
        ({"Range": "bytes=-100"}, 206, data[-100:]),
        # Several ranges: ignored (RFC 9110 allows it), all of it, which spends the link.
        ({"Range": "bytes=0-1,5-9"}, 200, data),
        ({"Range": "bytes=0-0, -1"}, 200, data),
        ({"Range": "bytes=100-,0-10", "If-Range": etag}, 200, data),
    ]
    for headers, expected, want in cases:
        token = sign(download_claims(server, backup))
        status, _, body = await fetch(daemon, token, **headers)
        assert (status, body == want) == (expected, True), headers
        assert (await fetch(daemon, token))[0] == 401, headers


class GatedFind:
    """The daemon's own ``LocalStorage.find``, held after its first answer until released: the
    window between finding an archive and opening it, which no real ordering of requests can
    hold open. Every later call passes straight through."""

    def __init__(self, find) -> None:
        self._find = find
        self.found = threading.Event()
        self.release = threading.Event()

    def __call__(self, server: str, backup: str) -> Path | None:
        path = self._find(server, backup)
        if not self.found.is_set():
            self.found.set()
            if not self.release.wait(15):
                raise TimeoutError("the test never released the download")
        return path


async def test_a_delete_between_finding_and_opening_the_archive_leaves_a_404_and_the_link(
    daemon: Daemon, node: Node, panel: Panel, monkeypatch: pytest.MonkeyPatch
):
    server, backup, data = await make_backup(daemon, node, panel)
    storage = daemon.app[STORAGE]
    gate = GatedFind(storage.find)
    monkeypatch.setattr(storage, "find", gate)
    token = sign(download_claims(server, backup))
    download = asyncio.create_task(fetch(daemon, token))
    await wait_until(gate.found.is_set, "the download to find the archive")
    async with daemon.request(
        "DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()
    ) as r:
        assert r.status == 204
    gate.release.set()
    status, headers, body = await download
    assert status == 404, (status, body[:200])
    assert headers["Content-Type"].startswith("application/json")
    assert "Content-Disposition" not in headers
    assert body.startswith(b'{"error": ')
    # The link was not spent: with the archive back in place, it downloads it.
    node.archive(server, backup).write_bytes(data)
    status, _, body = await fetch(daemon, token)
    assert (status, body == data) == (200, True)


async def test_download_over_tls(node: Node, panel: Panel, tmp_path: Path):
    """On TLS the pump can't serve (sendfile(2) would bypass the encryption): the event loop's
    sendfile does, from the same open archive, for the whole of it and for a range."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = self_signed_certificate(tmp_path)
    raw = node.config_dict(remote=panel.url)
    raw["api"]["ssl"] = {"enabled": True, "cert": str(cert), "key": str(key)}
    cfg = parse_config(raw)
    prepare_directories(cfg)
    runner = web.AppRunner(create_app(cfg), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_ssl_context(cfg))
        await site.start()
        url = f"https://127.0.0.1:{runner.addresses[0][1]}"
        trust = ssl.create_default_context(cafile=str(cert))
        server = node.server({"world/data.bin": os.urandom(3_000_000)})
        backup = new_uuid()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
            body = {"adapter": "wings", "uuid": backup, "ignore": ""}
            panel.register(server, backup)
            path = f"{url}/api/servers/{server}/backup"
            async with http.post(path, json=body, headers=auth()) as r:
                assert r.status == 202
            await panel.wait_report(backup)
            data = node.archive(server, backup).read_bytes()
            for headers, status, want in [
                ({}, 200, data),
                ({"Range": "bytes=10-"}, 206, data[10:]),
            ]:
                params = {"token": sign(download_claims(server, backup))}
                async with http.get(f"{url}/download/backup", params=params, headers=headers) as r:
                    assert (r.status, await r.read() == want) == (status, True)
    finally:
        await runner.cleanup()
