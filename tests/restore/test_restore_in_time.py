"""S3 restores in time (issue 13, item 4): the panel's pre-signed GET lasts 5 minutes
(pterodactyl/panel 706db62 ``DownloadLinkService::getS3BackupUrl``), so the node opens it
before it answers, as Wings does (pterodactyl/wings f1c5bbd ``postServerRestoreBackup``): a
link that is refused or unreachable is the answer to the panel's request, which shows it to the
user; redirects are followed (at most 5), each hop checked by the address guard; and a restore
does not wait behind backups of other servers for a node-wide slot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from restore_helpers import Serve, serves

from tests.support.daemon_helpers import Daemon, Node, Panel, free_port, new_uuid
from wingsbak.appkeys import JOBS

MIB = 1024 * 1024


@pytest.fixture
async def trusting(start_daemon: Callable[..., Any], panel: Panel) -> Daemon:
    """A daemon that may download restores from 127.0.0.1."""
    d: Daemon = await start_daemon(remote=panel.url, restore_host_allowlist=["127.0.0.1"])
    return d


@pytest.fixture
async def archive(trusting: Daemon, node: Node, panel: Panel) -> tuple[str, bytes]:
    """A server and the bytes of a backup of it that holds ``restored.txt``."""
    server = node.server({"restored.txt": "from the backup"})
    backup = new_uuid()
    assert (await trusting.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    data = node.archive(server, backup).read_bytes()
    (node.data / server / "restored.txt").unlink()
    return server, data


def s3_denies() -> Any:
    """S3's answer to an expired pre-signed GET."""

    async def handler(request: web.Request) -> web.Response:
        body = "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
        return web.Response(status=403, text=body, content_type="application/xml")

    return handler


def redirects_then_serves(body: bytes, seen: list[str]) -> Any:
    """``?hops=n``: a 302 to ``?hops=n-1``; ``hops=0`` (or none) serves ``body``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.query_string)
        hops = int(request.query.get("hops", "0"))
        if hops > 0:
            raise web.HTTPFound(f"{request.path}?hops={hops - 1}")
        return web.Response(body=body, content_type="application/x-gzip")

    return handler


async def test_a_refused_link_is_the_answer_to_the_restore_request(
    trusting: Daemon, node: Node, panel: Panel, serve: Serve
) -> None:
    server = node.server()
    backup = new_uuid()
    url = await serve(s3_denies())
    status, answer = await trusting.post_restore(server, backup, adapter="s3", download_url=url)
    assert status == 400, answer
    assert "403" in answer["error"]
    # Nothing was started: no restore report (the panel rolls its own state back).
    assert panel.reports(backup, restore=True) == []
    assert not trusting.app[JOBS].restores


async def test_an_unreachable_link_is_a_502(trusting: Daemon, node: Node, panel: Panel) -> None:
    server = node.server()
    backup = new_uuid()
    url = f"http://127.0.0.1:{free_port()}/backup.tar.gz"  # nothing listens there
    status, answer = await trusting.post_restore(server, backup, adapter="s3", download_url=url)
    assert status == 502, answer
    assert "could not be reached" in answer["error"]
    assert panel.reports(backup, restore=True) == []


async def test_redirects_are_followed_up_to_five(
    trusting: Daemon, node: Node, panel: Panel, serve: Serve, archive: tuple[str, bytes]
) -> None:
    server, data = archive
    seen: list[str] = []
    url = await serve(redirects_then_serves(data, seen))
    backup = new_uuid()
    status, answer = await trusting.post_restore(
        server, backup, adapter="s3", download_url=url + "?hops=5"
    )
    assert status == 202, answer
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": True}
    assert (node.data / server / "restored.txt").read_text() == "from the backup"
    assert len(seen) == 6

    seen.clear()
    status, answer = await trusting.post_restore(
        server, new_uuid(), adapter="s3", download_url=url + "?hops=6"
    )
    assert status == 400, answer
    assert "redirected more than 5 times" in answer["error"]
    assert len(seen) == 6


async def test_each_redirect_is_checked_by_the_address_guard(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, serve: Serve
) -> None:
    """The first hop is allowlisted; the one it redirects to (10.0.0.1) is not."""
    d: Daemon = await start_daemon(remote=panel.url, restore_host_allowlist=["127.0.0.1"])

    async def inward(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://10.0.0.1/latest/meta-data/")

    url = await serve(inward)
    status, answer = await d.post_restore(
        node.server(), new_uuid(), adapter="s3", download_url=url
    )
    assert status == 400, answer
    assert "10.0.0.1" in answer["error"] and "private" in answer["error"]


async def test_a_restore_does_not_wait_behind_a_backup_of_another_server(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, serve: Serve
) -> None:
    # One node-wide backup slot, taken by a backup of 8 MiB paced at 1 MiB/s.
    d: Daemon = await start_daemon(
        remote=panel.url, max_concurrent=1, restore_host_allowlist=["127.0.0.1"]
    )
    target = node.server({"restored.txt": "from the backup"})
    kept = new_uuid()
    assert (await d.post_backup(target, kept))[0] == 202
    assert (await panel.wait_report(kept)).json["successful"] is True
    await node.outbox_settled()  # the next daemon shares the node's directories
    slow: Daemon = await start_daemon(
        remote=panel.url, max_concurrent=1, write_limit=1, restore_host_allowlist=["127.0.0.1"]
    )
    busy = node.random_server(8 * MIB, files=4)
    running = new_uuid()
    assert (await slow.post_backup(busy, running))[0] == 202
    await panel.wait_for(
        lambda: bool(node.temporaries(busy)), what="the other server's backup to be running"
    )
    link = await serve(serves(node.archive(target, kept).read_bytes()))
    for body in ({}, {"adapter": "s3", "download_url": link}):
        before = len(panel.reports(kept, restore=True))
        status, answer = await slow.post_restore(target, kept, truncate_directory=True, **body)
        assert status == 202, answer
        report = await panel.wait_report(kept, count=before + 1, restore=True)
        assert report.json == {"successful": True}
        # The backup that holds the only slot has not finished: the restore did not wait.
        assert panel.reports(running) == []
    assert (await panel.wait_report(running, timeout=60)).json["successful"] is True
