"""The daemon as a real process: SIGTERM during a backup, kill -9 and restart, the outbox across
a restart, one-time download tokens across a restart."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import aiohttp

from tests.support.daemon_helpers import (
    NODE_TOKEN,
    DaemonProcess,
    Node,
    Panel,
    auth,
    download_claims,
    new_uuid,
    panel_creates,
    sign,
    wait_until,
)

FIVE_MIB = 5 * 1024 * 1024


async def post_backup(proc: DaemonProcess, server: str, backup: str) -> int:
    panel_creates(proc.config["remote"], server, backup)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proc.url}/api/servers/{server}/backup",
            json={"adapter": "wings", "uuid": backup, "ignore": ""},
            headers=auth(),
        ) as r,
    ):
        return r.status


def journal(node: Node) -> dict:
    try:
        return json.loads((node.backups / ".wingsbak-journal.json").read_text())
    except FileNotFoundError:
        return {}


def outbox(node: Node) -> list:
    try:
        return json.loads((node.backups / ".wingsbak-outbox.json").read_text())
    except FileNotFoundError:
        return []


async def test_sigterm_during_backup(daemon_process, node: Node, panel: Panel):
    proc: DaemonProcess = daemon_process(remote=panel.url, write_limit=1, shutdown_grace=0.5)
    await proc.start()
    server = node.random_server(FIVE_MIB, files=5)
    backup, queued = new_uuid(), new_uuid()
    assert await post_backup(proc, server, backup) == 202
    assert await post_backup(proc, server, queued) == 202  # waits behind the first
    await wait_until(lambda: bool(node.temporaries(server)), "the temporary archive")

    assert await proc.stop(signal.SIGTERM) == 0, proc.logs()
    for b in (backup, queued):
        assert not node.archive(server, b).exists()
    assert not node.temporaries(), node.temporaries()
    assert journal(node) == {}
    for b in (backup, queued):
        report = await panel.wait_report(b)
        assert report.json["successful"] is False
        assert report.json["size"] == 0
    # Delivered before the process stopped, so nothing is left for the next start.
    assert outbox(node) == []
    await asyncio.sleep(0.2)
    assert len(panel.reports(backup)) == 1 and len(panel.reports(queued)) == 1


async def test_sigterm_with_panel_down_reports_after_restart(
    daemon_process, node: Node, panel_down: Panel
):
    panel = panel_down
    proc: DaemonProcess = daemon_process(remote=panel.url, write_limit=1, shutdown_grace=0.5)
    await proc.start()
    server = node.random_server(FIVE_MIB, files=5)
    backup = new_uuid()
    assert await post_backup(proc, server, backup) == 202
    await wait_until(lambda: bool(node.temporaries(server)), "the temporary archive")
    assert await proc.stop(signal.SIGTERM) == 0, proc.logs()
    assert not node.archive(server, backup).exists()
    assert not node.temporaries()
    assert [item["path"] for item in outbox(node)] == [f"/backups/{backup}"]

    await panel.start()
    await proc.start()
    report = await panel.wait_report(backup)
    assert report.json["successful"] is False
    await wait_until(lambda: outbox(node) == [], "the outbox to empty")
    await asyncio.sleep(0.2)
    assert len(panel.reports(backup)) == 1
    assert await proc.stop() == 0


async def test_kill_9_during_backup_then_restart(daemon_process, node: Node, panel: Panel):
    proc: DaemonProcess = daemon_process(remote=panel.url, write_limit=1)
    await proc.start()
    server = node.random_server(FIVE_MIB, files=5)
    backup = new_uuid()
    assert await post_backup(proc, server, backup) == 202
    await wait_until(lambda: bool(node.temporaries(server)), "the temporary archive")
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    # A crash leaves the temporary file and the journal entry, never a final archive.
    assert node.temporaries(server)
    assert backup in journal(node)
    assert not node.archive(server, backup).exists()
    assert panel.reports(backup) == []

    await proc.start()
    report = await panel.wait_report(backup)
    assert report.json["successful"] is False
    assert not node.temporaries(), node.temporaries()
    assert not node.archive(server, backup).exists()
    assert journal(node) == {}
    await asyncio.sleep(0.2)
    assert len(panel.reports(backup)) == 1
    assert await proc.stop() == 0


async def test_outbox_survives_restart(daemon_process, node: Node, panel_down: Panel):
    panel = panel_down
    proc: DaemonProcess = daemon_process(remote=panel.url)
    await proc.start()
    server = node.server({"a.txt": "a" * 1000})
    backup = new_uuid()
    assert await post_backup(proc, server, backup) == 202
    archive = node.archive(server, backup)
    await wait_until(archive.is_file, "the archive")
    await wait_until(lambda: len(outbox(node)) == 1, "the outbox entry")
    assert await proc.stop(signal.SIGTERM) == 0, proc.logs()
    assert len(outbox(node)) == 1, "the undelivered report must stay in the outbox"

    await panel.start()
    await proc.start()
    report = await panel.wait_report(backup)
    sha1 = subprocess.run(["sha1sum", str(archive)], capture_output=True, text=True, check=True)
    assert report.json["successful"] is True
    assert report.json["checksum"] == sha1.stdout.split()[0]
    assert report.json["size"] == archive.stat().st_size
    await wait_until(lambda: outbox(node) == [], "the outbox to empty")
    await asyncio.sleep(0.3)
    assert len(panel.reports(backup)) == 1
    assert await proc.stop() == 0


async def test_download_token_replay_after_restart(daemon_process, node: Node, panel: Panel):
    proc: DaemonProcess = daemon_process(remote=panel.url)
    await proc.start()
    server = node.server({"a.txt": "a" * 1000})
    backup = new_uuid()
    assert await post_backup(proc, server, backup) == 202
    await panel.wait_report(backup)
    token = sign(download_claims(server, backup))
    url = f"{proc.url}/download/backup"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, params={"token": token}) as r:
            assert r.status == 200
            assert await r.read() == node.archive(server, backup).read_bytes()
        assert await proc.stop() == 0
        await proc.start()
        async with s.get(url, params={"token": token}) as r:
            assert r.status == 401
            assert set(await r.json()) == {"error"}
    assert await proc.stop() == 0
    # The log (JSON lines, debug level) never holds the node token or a JWT, and the lines
    # about this backup carry its server, backup and request id.
    text = proc.log_path.read_text(encoding="utf-8")
    assert NODE_TOKEN not in text
    assert token not in text and token.split(".")[1] not in text
    lines = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
    download = [ln for ln in lines if ln.get("event") == "backup_download"]
    assert download and download[0]["server"] == server and download[0]["backup"] == backup
    assert download[0]["request_id"]


async def test_sigterm_during_a_big_backup_with_ignore_lines(
    daemon_process, node: Node, panel: Panel
):
    """The counting pass was a daemon thread still inside RE2 when the interpreter finalized
    (exit 134, "terminate called without an active exception"), walking on after the backup
    was cancelled: now it stops with its backup and is joined before the job ends."""
    from bench.rules import realistic_lines

    server = node.server()
    base = node.data / server
    for d in range(20):
        sub = base / f"plugins/P{d}/data"
        sub.mkdir(parents=True)
        for n in range(1000):
            (sub / f"f{n}.yml").touch()
    proc: DaemonProcess = daemon_process(remote=panel.url, shutdown_grace=0)
    await proc.start()
    backup = new_uuid()
    panel_creates(proc.config["remote"], server, backup)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proc.url}/api/servers/{server}/backup",
            json={"adapter": "wings", "uuid": backup, "ignore": "\n".join(realistic_lines())},
            headers=auth(),
        ) as r,
    ):
        assert r.status == 202
    await wait_until(lambda: bool(node.temporaries(server)), "the temporary archive")

    assert await proc.stop(signal.SIGTERM) == 0, proc.logs()
    events = [
        json.loads(line).get("event")
        for line in proc.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    counted = [e for e in events if e in ("archive_measure_stopped", "archive_measured")]
    assert len(counted) == 1, proc.logs()
    # Ended (and joined) before its backup was reported cancelled, before the daemon stopped.
    order = [events.index(e) for e in (counted[0], "backup_cancelled", "wingsbak_stopped")]
    assert order == sorted(order), events
    report = await panel.wait_report(backup)
    assert report.json["successful"] is False
