"""With node S3 credentials configured (system.backups.s3), backups on the node's disk do not
depend on S3: deleting one never asks the bucket. What must ask it (a backup that is not on the
disk) answers a 502 naming S3 when the bucket fails, unreachable or refusing. And a HEAD of a
backup in the bucket does not spend its one-time link, nor hand out the bucket's link."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.support.daemon_helpers import (
    Daemon,
    Node,
    Panel,
    auth,
    download_claims,
    free_port,
    new_uuid,
    sign,
)
from tests.support.s3_fixtures import bucket, moto_endpoint, s3_admin  # noqa: F401 - registers them
from tests.support.s3_helpers import s3_config


class RefusingS3:
    """An S3 endpoint that answers every request with 403 AccessDenied, and records them."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _refuse(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        body = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        return web.Response(status=403, text=body, content_type="application/xml")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._refuse)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def asked_about(self, server: str, backup: str) -> bool:
        return any(p.endswith(f"/{server}/{backup}.tar.gz") for p in self.paths)


@pytest.fixture
async def refusing_s3() -> AsyncIterator[RefusingS3]:
    s3 = RefusingS3()
    await s3.start()
    yield s3
    assert s3.runner is not None
    await s3.runner.cleanup()


def with_s3(endpoint: str, bucket_name: str = "backups") -> Callable[[dict[str, Any]], None]:
    def hook(raw: dict[str, Any]) -> None:
        raw["system"]["backups"]["s3"] = dataclasses.asdict(s3_config(endpoint, bucket_name))

    return hook


async def local_backup(daemon: Daemon, node: Node, panel: Panel) -> tuple[str, str]:
    server = node.server()
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202  # adapter wings: on the disk
    assert (await panel.wait_report(backup)).json["successful"] is True
    return server, backup


async def delete(daemon: Daemon, server: str, backup: str) -> tuple[int, bytes]:
    path = f"/api/servers/{server}/backup/{backup}"
    async with daemon.request("DELETE", path, headers=auth()) as r:
        return r.status, await r.read()


async def download(daemon: Daemon, server: str, backup: str) -> tuple[int, bytes]:
    token = sign(download_claims(server, backup))
    async with daemon.request("GET", "/download/backup", params={"token": token}) as r:
        return r.status, await r.read()


def assert_s3_failure(status: int, body: bytes) -> None:
    assert status == 502, (status, body)
    assert body.startswith(b'{"error": ') and b"S3" in body, body
    assert b"127.0.0.1" not in body  # the endpoint is for the node's log, not the answer


async def test_deleting_a_backup_on_the_disk_never_asks_s3(
    start_daemon, panel: Panel, node: Node, refusing_s3: RefusingS3
):
    daemon = await start_daemon(remote=panel.url, config_hook=with_s3(refusing_s3.url))
    server, backup = await local_backup(daemon, node, panel)
    refusing_s3.paths.clear()  # the duplicate check asked every store when it was accepted
    assert await delete(daemon, server, backup) == (204, b"")
    assert not node.archive(server, backup).exists()
    assert not refusing_s3.asked_about(server, backup)
    # Not on the disk any more: only the bucket can say, and it refuses.
    assert_s3_failure(*await delete(daemon, server, backup))
    assert refusing_s3.asked_about(server, backup)


async def test_a_download_of_a_backup_not_on_the_disk_with_s3_refusing_is_502(
    start_daemon, panel: Panel, node: Node, refusing_s3: RefusingS3
):
    daemon = await start_daemon(remote=panel.url, config_hook=with_s3(refusing_s3.url))
    server = node.server()
    assert_s3_failure(*await download(daemon, server, new_uuid()))


async def test_s3_unreachable(start_daemon, panel: Panel, node: Node):
    """Nothing listens at the endpoint: the backup on the disk is deleted at once, and what
    needs the bucket fails (after the S3 client's retries) with a 502."""
    dead = f"http://127.0.0.1:{free_port()}"
    daemon = await start_daemon(remote=panel.url, config_hook=with_s3(dead))
    server, backup = await local_backup(daemon, node, panel)
    assert await delete(daemon, server, backup) == (204, b"")
    assert_s3_failure(*await download(daemon, server, backup))


async def test_head_of_a_backup_in_the_bucket_leaves_its_link_usable(
    start_daemon,
    panel: Panel,
    node: Node,
    moto_endpoint: str,  # noqa: F811 - the fixture
    s3_admin: Any,  # noqa: F811
    bucket: str,  # noqa: F811
):
    daemon = await start_daemon(remote=panel.url, config_hook=with_s3(moto_endpoint, bucket))
    server, backup = node.server(), new_uuid()
    data = b"an archive in the bucket" * 100
    s3_admin.put_object(Bucket=bucket, Key=f"{server}/{backup}.tar.gz", Body=data)
    token = sign(download_claims(server, backup))
    url = "/download/backup"
    for _ in range(2):
        async with daemon.request("HEAD", url, params={"token": token}) as r:
            assert r.status == 200
            assert int(r.headers["Content-Length"]) == len(data)
            assert r.headers["Content-Disposition"] == (
                f'attachment; filename="backup-{backup}.tar.gz"'
            )
            assert "Location" not in r.headers
    async with daemon.request("GET", url, params={"token": token}, allow_redirects=False) as r:
        assert r.status == 302
        location = r.headers["Location"]
    async with daemon.session.get(location) as r:
        assert r.status == 200 and await r.read() == data
    for method in ("GET", "HEAD"):  # spent
        async with daemon.request(method, url, params={"token": token}) as r:
            assert r.status == 401, method
