"""What a stop or a crash leaves for the panel: every accepted job gets exactly one report,
queued ones included. (Restores never queue: they do not wait for a backup slot, see
test_daemon_panel_compat.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from typing import Any

import aiohttp

from tests.support.daemon_helpers import (
    DaemonProcess,
    Node,
    Panel,
    auth,
    new_uuid,
    panel_creates,
    panel_knows,
    wait_until,
)

MIB = 1024 * 1024


async def post(proc: DaemonProcess, path: str, body: dict[str, Any]) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proc.url}{path}", json=body, headers=auth()) as r,
    ):
        return r.status


async def backup(proc: DaemonProcess, server: str, uuid: str) -> int:
    body = {"adapter": "wings", "uuid": uuid, "ignore": ""}
    panel_creates(proc.config["remote"], server, uuid)
    return await post(proc, f"/api/servers/{server}/backup", body)


async def restore(proc: DaemonProcess, server: str, uuid: str) -> int:
    body = {"adapter": "wings", "truncate_directory": True}
    panel_knows(proc.config["remote"], server, uuid)
    return await post(proc, f"/api/servers/{server}/backup/{uuid}/restore", body)


def journal(node: Node) -> dict[str, Any]:
    path = node.backups / ".wingsbak-journal.json"
    return json.loads(path.read_text()) if path.exists() else {}


async def made_backup(daemon_process: Any, node: Node, panel: Panel, server: str) -> str:
    """A finished local backup of ``server``, made by a daemon that is then stopped."""
    proc: DaemonProcess = daemon_process(remote=panel.url)
    await proc.start()
    uuid = new_uuid()
    assert await backup(proc, server, uuid) == 202
    assert (await panel.wait_report(uuid)).json["successful"] is True
    assert await proc.stop() == 0
    return uuid


async def test_kill_9_with_queued_jobs_reports_every_one_after_restart(
    daemon_process: Any, node: Node, panel: Panel
) -> None:
    restored = node.random_server(4 * MIB)
    kept = await made_backup(daemon_process, node, panel, restored)
    proc: DaemonProcess = daemon_process(remote=panel.url, write_limit=1, max_concurrent=1)
    await proc.start()
    big = node.random_server(5 * MIB)
    running, queued = new_uuid(), new_uuid()
    assert await backup(proc, big, running) == 202
    assert await backup(proc, big, queued) == 202  # behind the first: one backup per server
    # Restores do not wait for the one job slot: this one runs, paced at 1 MiB/s.
    assert await restore(proc, restored, kept) == 202
    await wait_until(lambda: bool(node.temporaries(big)), "the running backup's archive")
    # Every accepted job is journaled as soon as it is accepted, not only the running one.
    await wait_until(lambda: set(journal(node)) == {running, queued, kept}, "the journal")
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    assert panel.reports(running) == panel.reports(queued) == []

    await proc.start()
    for uuid in (running, queued):
        assert (await panel.wait_report(uuid)).json["successful"] is False
    assert (await panel.wait_report(kept, restore=True)).json == {"successful": False}
    await wait_until(lambda: journal(node) == {}, "the journal to empty")
    await asyncio.sleep(0.3)
    assert [len(panel.reports(u)) for u in (running, queued)] == [1, 1]
    assert len(panel.reports(kept, restore=True)) == 1
    assert await proc.stop() == 0


async def test_restart_reports_a_committed_archive_whose_report_was_lost(
    daemon_process: Any, node: Node, panel: Panel
) -> None:
    server = node.server({"a.txt": "a" * 5000})
    done = await made_backup(daemon_process, node, panel, server)
    archive = node.archive(server, done)
    unverified = await made_backup(daemon_process, node, panel, server)
    node.archive(server, unverified).with_suffix(".gz.sha1").unlink()
    # The state a crash leaves between the commit and the queued report: the journal entries
    # are still there, the outbox is empty.
    entries = {
        u: {"kind": "backup", "server": server, "adapter": "wings"} for u in (done, unverified)
    }
    (node.backups / ".wingsbak-journal.json").write_text(json.dumps(entries))
    for u in (done, unverified):  # lost: the panel's records never heard of the ends
        panel.register(server, u)

    proc: DaemonProcess = daemon_process(remote=panel.url)
    await proc.start()
    report = (await panel.wait_report(done, count=2)).json
    assert report["successful"] is True
    assert report["checksum"] == hashlib.sha1(archive.read_bytes()).hexdigest()
    assert report["size"] == archive.stat().st_size
    assert archive.is_file()
    # Without its sidecar the archive's checksum was never recorded: removed, reported failed.
    assert (await panel.wait_report(unverified, count=2)).json["successful"] is False
    assert not node.archive(server, unverified).exists()
    await wait_until(lambda: journal(node) == {}, "the journal to empty")
    assert await proc.stop() == 0
