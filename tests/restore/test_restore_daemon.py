"""Restore driven through the daemon's HTTP API: local archives and download URLs."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from wingsbak.archive.extract import RestoreError, restore_archive_file
from wingsbak.config import parse_config
from wingsbak.http.app import create_app

TOKEN = "restore-daemon-test-token-0123456789"
SERVER = "7c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class Panel:
    """A real HTTP panel that records reports and serves an archive for s3-style restores."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.archive = b""
        self.app = web.Application()
        self.app.router.add_post("/api/remote/backups/{uuid}", self.record)
        self.app.router.add_post("/api/remote/backups/{uuid}/restore", self.record)
        self.app.router.add_get("/archive.tar.gz", self.serve_archive)
        self.app.router.add_get("/broken.tar.gz", self.serve_broken)
        self.url = ""

    async def record(self, request: web.Request) -> web.Response:
        self.reports.append((request.path, await request.json()))
        return web.Response(status=204)

    async def serve_archive(self, request: web.Request) -> web.Response:
        return web.Response(body=self.archive, content_type="application/x-gzip")

    async def serve_broken(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(self.archive))})
        await resp.prepare(request)
        await resp.write(self.archive[: len(self.archive) // 2])
        request.transport.close()  # type: ignore[union-attr]
        return resp

    async def wait_for(self, path: str) -> dict[str, Any]:
        for _ in range(600):
            for p, body in self.reports:
                if p == path:
                    return body
            await asyncio.sleep(0.05)
        raise AssertionError(f"no report at {path}; got {self.reports}")


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[str, Panel, Path]]:
    async for item in _node(tmp_path, allowlist=[]):
        yield item


@pytest.fixture
async def trusting_node(tmp_path: Path) -> AsyncIterator[tuple[str, Panel, Path]]:
    async for item in _node(tmp_path, allowlist=["127.0.0.1"]):
        yield item


async def _node(tmp_path: Path, allowlist: list[str]) -> AsyncIterator[tuple[str, Panel, Path]]:
    panel = Panel()
    panel_runner, panel.url = await _serve(panel.app)
    root = tmp_path / "volumes" / SERVER
    (root / "world").mkdir(parents=True)
    (root / "world" / "level.dat").write_bytes(os.urandom(200_000))
    (root / "server.properties").write_text("motd=before\n")
    (root / "empty").mkdir()
    os.symlink("world/level.dat", root / "link")
    (tmp_path / "backups").mkdir()
    cfg = parse_config(
        {
            "token": TOKEN,
            "remote": panel.url,
            "system": {
                "data": str(tmp_path / "volumes"),
                "backup_directory": str(tmp_path / "backups"),
                "backups": {
                    "report_retry_initial": 0.05,
                    "restore_host_allowlist": allowlist,
                },
            },
        }
    )
    runner, url = await _serve(create_app(cfg))
    yield url, panel, root
    await runner.cleanup()
    await panel_runner.cleanup()


def _snapshot(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode)
            else:
                out[rel] = ("file", st.st_mode, int(st.st_mtime), p.read_bytes())
    return out


async def _backup(http: aiohttp.ClientSession, url: str, panel: Panel) -> str:
    backup = str(uuid.uuid4())
    async with http.post(
        f"{url}/api/servers/{SERVER}/backup",
        json={"adapter": "wings", "uuid": backup},
        headers=HEADERS,
    ) as resp:
        assert resp.status == 202
    report = await panel.wait_for(f"/api/remote/backups/{backup}")
    assert report["successful"] is True
    return backup


async def _restore(
    http: aiohttp.ClientSession, url: str, panel: Panel, backup: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Ask for a wings restore (202) and return the panel's restore report."""
    async with http.post(
        f"{url}/api/servers/{SERVER}/backup/{backup}/restore",
        json={"adapter": "wings", **body},
        headers=HEADERS,
    ) as resp:
        assert resp.status == 202
    return await panel.wait_for(f"/api/remote/backups/{backup}/restore")


async def test_backup_then_truncating_restore_gives_the_same_tree(
    node: tuple[str, Panel, Path],
) -> None:
    url, panel, root = node
    before = _snapshot(root)
    async with aiohttp.ClientSession() as http:
        backup = await _backup(http, url, panel)
        (root / "server.properties").write_text("motd=after\n")
        (root / "added.txt").write_text("new")
        shutil.rmtree(root / "empty")
        report = await _restore(http, url, panel, backup, {"truncate_directory": True})
    assert report == {"successful": True}
    assert _snapshot(root) == before


async def test_restore_from_a_download_url_and_a_refused_private_url(
    node: tuple[str, Panel, Path], tmp_path: Path
) -> None:
    url, panel, root = node
    src = tmp_path / "other"
    (src / "plugins").mkdir(parents=True)
    (src / "plugins" / "a.jar").write_bytes(os.urandom(50_000))
    panel.archive = await _tar_gz(src)
    backup = str(uuid.uuid4())
    async with aiohttp.ClientSession() as http:
        # 127.0.0.1 is not allowlisted: refused before anything is fetched.
        async with http.post(
            f"{url}/api/servers/{SERVER}/backup/{backup}/restore",
            json={"adapter": "s3", "download_url": f"{panel.url}/archive.tar.gz"},
            headers=HEADERS,
        ) as resp:
            assert resp.status == 400
            assert "download_url" in (await resp.json())["error"]
        async with http.post(
            f"{url}/api/servers/{SERVER}/backup/{backup}/restore",
            json={"adapter": "s3"},
            headers=HEADERS,
        ) as resp:
            assert resp.status == 400
    assert not (root / "plugins").exists()


async def test_restore_of_an_unknown_backup_is_404_and_busy_server_is_409(
    node: tuple[str, Panel, Path],
) -> None:
    url, _panel, _root = node
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/servers/{SERVER}/backup/{uuid.uuid4()}/restore",
            json={"adapter": "wings"},
            headers=HEADERS,
        ) as resp:
            assert resp.status == 404
        async with http.post(
            f"{url}/api/servers/{SERVER}/backup/{uuid.uuid4()}/restore",
            json={"adapter": "wings", "truncate_directory": "yes"},
            headers=HEADERS,
        ) as resp:
            assert resp.status == 400


async def _tar_gz(src: Path) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "tar", "-czf", "-", "-C", str(src), ".", stdout=asyncio.subprocess.PIPE
    )
    data, _ = await proc.communicate()
    return data


async def test_allowlisted_download_url_restores_and_a_broken_one_reports_failure(
    trusting_node: tuple[str, Panel, Path], tmp_path: Path
) -> None:
    url, panel, root = trusting_node
    src = tmp_path / "other"
    (src / "plugins").mkdir(parents=True)
    payload = os.urandom(300_000)
    (src / "plugins" / "a.jar").write_bytes(payload)
    panel.archive = await _tar_gz(src)
    good, broken = str(uuid.uuid4()), str(uuid.uuid4())
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/servers/{SERVER}/backup/{good}/restore",
            json={"adapter": "s3", "download_url": f"{panel.url}/archive.tar.gz"},
            headers=HEADERS,
        ) as resp:
            assert resp.status == 202
        assert await panel.wait_for(f"/api/remote/backups/{good}/restore") == {"successful": True}
        assert (root / "plugins" / "a.jar").read_bytes() == payload
        assert (root / "server.properties").exists()  # no truncate: other files stay
        async with http.post(
            f"{url}/api/servers/{SERVER}/backup/{broken}/restore",
            json={"adapter": "s3", "download_url": f"{panel.url}/broken.tar.gz"},
            headers=HEADERS,
        ) as resp:
            assert resp.status == 202
        report = await panel.wait_for(f"/api/remote/backups/{broken}/restore")
    assert report == {"successful": False}


async def test_local_archive_not_matching_its_sidecar_restores_nothing(
    node: tuple[str, Panel, Path],
) -> None:
    url, panel, root = node
    async with aiohttp.ClientSession() as http:
        backup = await _backup(http, url, panel)
        archive = next(root.parent.parent.glob(f"backups/*/backup-{backup}.tar.gz"))
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle: the gzip CRC is at the end
        archive.write_bytes(bytes(data))
        (root / "server.properties").write_text("motd=changed since\n")
        before = _snapshot(root)
        report = await _restore(http, url, panel, backup, {"truncate_directory": True})
    assert report == {"successful": False}
    assert _snapshot(root) == before
    with pytest.raises(RestoreError):  # the engine alone would have failed only at the end
        restore_archive_file(archive, root.parent / "scratch")
