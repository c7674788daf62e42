"""The node's bucket (``store: s3``) driven through the daemon's HTTP API, against moto in
server mode: the panel's ``wings`` adapter, a local-style report."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon_helpers import Daemon, Node, Panel, auth, download_claims, new_uuid, sign
from tests.support.s3_helpers import s3_config


@pytest.fixture
def s3_daemon(
    start_daemon: Callable[..., Any], panel: Panel, moto_endpoint: str
) -> Callable[[str], Awaitable[Daemon]]:
    """``await s3_daemon(bucket)`` -> a daemon reporting to ``panel`` whose wings backups go
    straight to ``bucket`` of moto, with the node's own credentials."""

    async def start(bucket: str) -> Daemon:
        def s3(raw: dict[str, Any]) -> None:
            raw["system"]["backups"]["s3"] = dataclasses.asdict(s3_config(moto_endpoint, bucket))
            raw["system"]["backups"]["store"] = "s3"

        d: Daemon = await start_daemon(remote=panel.url, config_hook=s3)
        return d

    return start


@pytest.fixture
def server(node: Node, big_tree: Path) -> str:
    """A server holding a copy of ``big_tree``."""
    server = new_uuid()
    shutil.copytree(big_tree, node.data / server)
    return server


async def test_s3_backup_reports_the_objects_checksum_and_downloads_by_redirect(
    s3_daemon: Callable[[str], Awaitable[Daemon]],
    panel: Panel,
    node: Node,
    server: str,
    s3_admin: Any,
    bucket: str,
) -> None:
    d = await s3_daemon(bucket)
    backup = new_uuid()
    assert (await d.post_backup(server, backup, ignore="logs/", adapter="wings"))[0] == 202
    report = (await panel.wait_report(backup, timeout=30)).json
    assert report["successful"] is True
    # A local-style report: the node completed the upload, the panel has nothing to finish.
    assert report["parts"] is None
    body = s3_admin.get_object(Bucket=bucket, Key=f"{server}/{backup}.tar.gz")["Body"].read()
    assert report["checksum"] == hashlib.sha1(body).hexdigest()
    assert report["size"] == len(body)
    assert s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # Nothing of the archive was written on the node.
    assert list(node.backups.rglob("*.tar.gz*")) == []

    async with d.session.get(
        f"{d.url}/download/backup",
        params={"token": sign(download_claims(server, backup))},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    async with d.session.get(location) as resp:
        assert resp.status == 200
        assert await resp.read() == body

    path = f"/api/servers/{server}/backup/{backup}"
    async with d.request("DELETE", path, headers=auth()) as resp:
        assert resp.status == 204
    listed = s3_admin.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert listed == []
    async with d.request("DELETE", path, headers=auth()) as resp:
        assert resp.status == 404


async def test_s3_backup_to_a_missing_bucket_reports_failure(
    s3_daemon: Callable[[str], Awaitable[Daemon]], panel: Panel, node: Node, server: str
) -> None:
    d = await s3_daemon("no-such-bucket")
    backup = new_uuid()
    assert (await d.post_backup(server, backup, adapter="wings"))[0] == 202
    report = (await panel.wait_report(backup, timeout=30)).json
    assert report["successful"] is False
    assert report["checksum"] == "" and report["size"] == 0
    assert node.temporaries() == []
