"""Reports to the panel: retried while the panel is down or failing, delivered exactly once,
never retried on a 400, and a failed backup reported as such."""

from __future__ import annotations

import asyncio
import json
import os
import shutil

from tests.support.daemon_helpers import Daemon, Node, Panel, new_uuid, wait_until

OUTBOX = ".wingsbak-outbox.json"


def outbox_items(node: Node) -> list[dict]:
    try:
        return json.loads((node.backups / OUTBOX).read_text())
    except FileNotFoundError:
        return []


async def test_panel_not_listening_then_up(start_daemon, node: Node, panel_down: Panel):
    panel = panel_down
    d: Daemon = await start_daemon(remote=panel.url)
    server = node.server()
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    archive = node.archive(server, backup)
    await wait_until(archive.is_file, "the archive")
    # The report waits in the durable outbox while the panel cannot be reached.
    await wait_until(lambda: len(outbox_items(node)) == 1, "the outbox file")
    assert outbox_items(node)[0]["path"] == f"/backups/{backup}"
    assert (await d.system())["jobs"]["outbox"] == 1
    await asyncio.sleep(0.3)  # several attempts against a closed port

    await panel.start()
    report = await panel.wait_report(backup)
    assert report.json["successful"] is True
    assert report.json["size"] == archive.stat().st_size
    await wait_until(lambda: outbox_items(node) == [], "the outbox to empty")
    await asyncio.sleep(0.3)
    assert len(panel.reports(backup)) == 1
    assert (await d.system())["jobs"]["outbox"] == 0


async def test_panel_5xx_and_429_are_retried(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url)
    panel.fail_first = 3
    panel.fail_status = 503
    server = node.server()
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup, count=4)
    bodies = [r.json for r in panel.reports(backup)]
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0]["successful"] is True

    panel.fail_first = 2
    panel.fail_status = 429
    other = new_uuid()
    assert (await d.post_backup(server, other))[0] == 202
    await panel.wait_report(other, count=3)
    await asyncio.sleep(0.3)
    # Once answered 204, never sent again.
    assert len(panel.reports(backup)) == 4
    assert len(panel.reports(other)) == 3
    assert outbox_items(node) == []


async def test_panel_400_is_not_retried_and_archive_kept(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url)
    panel.status = 400
    server = node.server()
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    await asyncio.sleep(0.5)  # ten retry intervals
    assert len(panel.reports(backup)) == 1
    assert node.archive(server, backup).is_file()
    assert outbox_items(node) == []


async def test_failed_backup_reported_without_leftovers(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url, write_limit=1)
    server = node.random_server(700_000, files=2)
    first, second = new_uuid(), new_uuid()
    assert (await d.post_backup(server, first))[0] == 202
    assert (await d.post_backup(server, second))[0] == 202
    # The second waits behind the first; its server disappears meanwhile.
    assert any(j["uuid"] == second for j in (await d.system())["jobs"]["queued"])
    shutil.rmtree(node.data / server)
    report = await panel.wait_report(second, timeout=30)
    assert report.json["successful"] is False
    assert report.json["size"] == 0
    assert not node.archive(server, second).exists()
    await panel.wait_report(first, timeout=30)
    await d.wait_idle()
    assert not node.temporaries()
    assert not node.archive(server, second).with_name(f"{second}.tar.gz.sha1").exists()


async def test_no_panel_configured(start_daemon, node: Node):
    d: Daemon = await start_daemon(remote="")
    server = node.server({"f": os.urandom(10)})
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    await wait_until(node.archive(server, backup).is_file, "the archive")
    await d.wait_idle()
    assert outbox_items(node) == []
