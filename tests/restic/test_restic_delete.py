"""Deleting restic backups: forgotten at once, space back with a prune that never runs while
a backup uses the repository."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

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
from tests.support.restic_helpers import (
    needs_restic,
    repo_bytes,
    restic_backups,
    restic_processes,
    snapshots,
)
from wingsbak.appkeys import STORES

pytestmark = needs_restic
MIB = 1024 * 1024


async def delete(d: Daemon, server: str, backup: str) -> int:
    async with d.request("DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()) as r:
        return r.status


async def backed_up(d: Daemon, panel: Panel, server: str) -> str:
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    return backup


async def test_delete_forgets_at_once_and_a_prune_gives_the_space_back(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path, prune_interval=0.2)
    d = await start_daemon(remote=panel.url, **block)
    server = node.random_server(4 * MIB, files=2)
    backup = await backed_up(d, panel, server)
    repo = tmp_path / "repo"
    full = repo_bytes(repo)
    assert full > 4 * MIB

    with capture_logs() as logs:
        assert await delete(d, server, backup) == 204
        # Gone for the panel at once, and for restic as soon as the repository is free.
        assert await delete(d, server, backup) == 404
        token = sign(download_claims(server, backup))
        async with d.request("GET", "/download/backup", params={"token": token}) as r:
            assert r.status == 404
        await wait_until(lambda: d.app[STORES].by_name("restic").prunes == 1, "a prune", timeout=60)
    assert snapshots(block["restic"], f"backup:{backup}") == []
    assert repo_bytes(repo) < full - 3 * MIB
    (pruned,) = [e for e in logs if e["event"] == "restic_pruned"]
    assert pruned["freed_bytes"] > 3 * MIB
    assert await delete(d, new_uuid(), new_uuid()) == 404


async def test_prune_waits_for_a_running_backup(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path, prune_interval=0.1)
    # 1 MiB/s to the repository: the second backup runs for seconds.
    d = await start_daemon(remote=panel.url, write_limit=1, **block)
    old_server = node.random_server(MIB, files=1)
    old = await backed_up(d, panel, old_server)
    server = node.random_server(5 * MIB, files=5)
    running = new_uuid()
    with capture_logs() as logs:
        assert (await d.post_backup(server, running))[0] == 202
        store = d.app[STORES].by_name("restic")
        await wait_until(lambda: store._users == 1, "the backup to use the repository")
        assert await delete(d, old_server, old) == 204
        await asyncio.sleep(1.0)
        # Still running: the forget and the prune wait for it.
        assert panel.reports(running) == []
        assert len(snapshots(block["restic"], f"backup:{old}")) == 1
        assert store.prunes == 0
        report = (await panel.wait_report(running, timeout=60)).json
        await wait_until(lambda: store.prunes == 1, "the prune after the backup", timeout=60)
    assert report["successful"] is True
    assert snapshots(block["restic"], f"backup:{old}") == []
    events = [e["event"] for e in logs]
    assert events.index("backup_completed") < events.index("restic_snapshots_forgotten")
    assert events.index("restic_snapshots_forgotten") < events.index("restic_pruned")


async def test_restic_progress_reaches_the_job_state(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    d = await start_daemon(remote=panel.url, write_limit=1, **restic_backups(tmp_path))
    server = node.random_server(4 * MIB, files=4)
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202

    async def progressed() -> bool:
        running = (await d.system())["jobs"]["running"]
        return bool(running) and running[0].get("bytes_read", 0) > 0 and running[0]["bytes_total"]

    # restic's JSON status lines, as the .tar.gz engine's progress, while it runs (restic reads
    # ahead of the 1 MiB/s upload, so its byte count may be complete before it ends).
    await wait_until(progressed, "restic's progress in the job state", timeout=30)
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True


async def test_a_lock_left_by_a_killed_restic_does_not_stop_deletes(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    # restic killed mid-backup (the OOM killer, an operator's kill -9) leaves its lock in the
    # repository. forget takes an exclusive lock, which restic refuses while any other lock
    # is there, stale or not.
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, write_limit=1, **block)
    server = node.random_server(64 * 1024, files=2)
    kept = await backed_up(d, panel, server)
    big = node.random_server(16 * MIB, files=2)
    doomed = new_uuid()
    assert (await d.post_backup(big, doomed))[0] == 202
    locks = tmp_path / "repo" / "locks"
    await wait_until(
        lambda: bool(restic_processes(f"backup:{doomed}")) and any(locks.iterdir()),
        "restic backing up",
    )
    for pid in restic_processes(f"backup:{doomed}"):
        os.kill(pid, signal.SIGKILL)
    assert (await panel.wait_report(doomed, timeout=60)).json["successful"] is False
    assert any(locks.iterdir())  # the killed restic's lock stays

    assert await delete(d, server, kept) == 204
    await wait_until(
        lambda: snapshots(block["restic"], f"backup:{kept}") == [], "the forget", timeout=30
    )
