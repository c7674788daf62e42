"""A server directory that is a symlink (``<data>/<uuid> -> /etc``) or a file: the API answers
404 naming the reason, and a backup whose directory became one while it waited fails with a
report, archiving nothing of what the link points at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support.daemon_helpers import Daemon, Node, Panel, new_uuid, wait_until


@pytest.fixture
def outside(node: Node) -> Path:
    d = node.root / "etc"
    d.mkdir()
    (d / "shadow").write_text("root:$6$secret")
    return d


async def test_backup_of_a_symlinked_server_directory_is_404(
    daemon: Daemon, node: Node, panel: Panel, outside: Path
) -> None:
    server = new_uuid()
    (node.data / server).symlink_to(outside)
    with capture_logs() as logs:
        status, body = await daemon.post_backup(server)
    assert status == 404, body
    assert "symlink" in body["error"]
    assert str(outside) not in body["error"]
    refused = [e for e in logs if e["event"] == "server_directory_refused"]
    assert refused and refused[0]["server"] == server
    status, _ = await daemon.post_restore(server, new_uuid())
    assert status == 404
    assert list(node.backups.rglob("*.tar.gz")) == []
    assert panel.reports() == []


async def test_backup_of_a_server_directory_that_is_a_file_is_404(
    daemon: Daemon, node: Node
) -> None:
    server = new_uuid()
    (node.data / server).write_text("not a directory")
    status, body = await daemon.post_backup(server)
    assert status == 404, body
    assert "not a directory" in body["error"]
    missing, body = await daemon.post_backup(new_uuid())
    assert missing == 404 and "does not exist" in body["error"]


async def test_a_directory_swapped_for_a_symlink_while_queued_fails_the_backup(
    start_daemon, node: Node, panel: Panel, outside: Path
) -> None:
    d: Daemon = await start_daemon(remote=panel.url, write_limit=1, max_concurrent=1)
    busy = node.random_server(1_500_000, files=2)  # holds the only slot for about a second
    target = node.server({"server.properties": "motd=hello\n"})
    first, second = new_uuid(), new_uuid()
    with capture_logs() as logs:
        assert (await d.post_backup(busy, first))[0] == 202
        assert (await d.post_backup(target, second))[0] == 202

        async def queued() -> bool:
            return any(j["uuid"] == second for j in (await d.system())["jobs"]["queued"])

        await wait_until(queued, "the second backup to wait for the slot")
        os.rename(node.data / target, node.root / "moved")
        os.symlink(outside, node.data / target)
        report = await panel.wait_report(second)
    assert report.json["successful"] is False
    assert (await panel.wait_report(first)).json["successful"] is True
    failed = [e for e in logs if e["event"] == "backup_failed" and e["backup"] == second]
    assert failed and "the server directory is a symlink" in failed[0]["error"], logs
    assert not node.archive(target, second).exists()
    assert node.temporaries(target) == []
