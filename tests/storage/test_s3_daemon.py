"""The s3 adapter driven through the daemon's HTTP API, against moto in server mode."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from s3_helpers import s3_config

from wingsbak.config import Config, parse_config
from wingsbak.http.app import create_app

TOKEN = "s3-daemon-test-token-0123456789abcdef"
SERVER = "5d2f6c1e-8a41-4b7e-9c3d-0f1e2d3c4b5a"


class RecordingPanel:
    def __init__(self) -> None:
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.app = web.Application()
        self.app.router.add_post("/api/remote/backups/{uuid}", self.record)
        self.url = ""

    async def record(self, request: web.Request) -> web.Response:
        self.reports.append((request.match_info["uuid"], await request.json()))
        return web.Response(status=204)

    async def wait_for(self, backup: str) -> dict[str, Any]:
        for _ in range(600):
            for uid, body in self.reports:
                if uid == backup:
                    return body
            await asyncio.sleep(0.05)
        raise AssertionError(f"no report for {backup}")


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def node(
    tmp_path: Path, moto_endpoint: str, bucket: str, big_tree: Path
) -> AsyncIterator[tuple[str, RecordingPanel, Config]]:
    panel = RecordingPanel()
    panel_runner, panel.url = await _serve(panel.app)
    data = tmp_path / "volumes"
    shutil.copytree(big_tree, data / SERVER)
    cfg = parse_config(
        {
            "token": TOKEN,
            "token_id": "node1",
            "remote": panel.url,
            "system": {
                "data": str(data),
                "backup_directory": str(tmp_path / "backups"),
                "backups": {"report_retry_initial": 0.05},
            },
        }
    )
    cfg.system.backups.s3 = s3_config(moto_endpoint, bucket)
    (tmp_path / "backups").mkdir()
    runner, url = await _serve(create_app(cfg))
    yield url, panel, cfg
    await runner.cleanup()
    await panel_runner.cleanup()


def _download_token(backup: str) -> str:
    now = int(time.time())
    claims = {
        "server_uuid": SERVER,
        "backup_uuid": backup,
        "unique_id": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, TOKEN, algorithm="HS256")


async def test_s3_backup_reports_the_objects_checksum_and_downloads_by_redirect(
    node: tuple[str, RecordingPanel, Config], s3_admin: Any, bucket: str, tmp_path: Path
) -> None:
    url, panel, _cfg = node
    backup = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/servers/{SERVER}/backup",
            json={"adapter": "s3", "uuid": backup, "ignore": "logs/"},
            headers=headers,
        ) as resp:
            assert resp.status == 202
        report = await panel.wait_for(backup)
        assert report["successful"] is True
        assert report["parts"] == []
        body = s3_admin.get_object(Bucket=bucket, Key=f"{SERVER}/{backup}.tar.gz")["Body"].read()
        assert report["checksum"] == hashlib.sha1(body).hexdigest()
        assert report["size"] == len(body)
        assert s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        # Nothing of the archive was written on the node.
        assert list((tmp_path / "backups").rglob("*.tar.gz*")) == []

        async with http.get(
            f"{url}/download/backup",
            params={"token": _download_token(backup)},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 302
            location = resp.headers["Location"]
        async with http.get(location) as resp:
            assert resp.status == 200
            assert await resp.read() == body

        async with http.delete(
            f"{url}/api/servers/{SERVER}/backup/{backup}", headers=headers
        ) as resp:
            assert resp.status == 204
        listed = s3_admin.list_objects_v2(Bucket=bucket).get("Contents", [])
        assert listed == []
        async with http.delete(
            f"{url}/api/servers/{SERVER}/backup/{backup}", headers=headers
        ) as resp:
            assert resp.status == 404


async def test_s3_backup_to_a_missing_bucket_reports_failure(
    node: tuple[str, RecordingPanel, Config], tmp_path: Path
) -> None:
    _url, panel, cfg = node
    cfg.system.backups.s3 = dataclasses.replace(cfg.system.backups.s3, bucket="no-such-bucket")
    backup = str(uuid.uuid4())
    # The job manager built its S3 client at start; a new app sees the changed bucket.
    runner, url2 = await _serve(create_app(cfg))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url2}/api/servers/{SERVER}/backup",
                json={"adapter": "s3", "uuid": backup},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                assert resp.status == 202
            report = await panel.wait_for(backup)
    finally:
        await runner.cleanup()
    assert report["successful"] is False
    assert report["checksum"] == "" and report["size"] == 0
    assert list((tmp_path / "backups").rglob("*.part")) == []
