"""kill -9 of the real daemon process during a restic backup: restic dies with it, the
restarted daemon reports the backup failed (its journal), no snapshot stays, and the
repository is usable (its stale lock removed)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid, wait_until
from tests.support.restic_helpers import (
    needs_restic,
    oracle,
    restic_backups,
    restic_processes,
    snapshots,
)

pytestmark = needs_restic
MIB = 1024 * 1024


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_kill_9_during_a_restic_backup_then_restart(
    daemon_process: Callable[..., DaemonProcess], node: Node, panel: Panel, tmp_path: Path
) -> None:
    backups = restic_backups(tmp_path)
    assert oracle(backups["restic"], "init").returncode == 0
    # 1 MiB/s to the repository: the backup is mid-way for seconds.
    # No scheduled check: its `restic check` takes a lock of its own while the test looks
    # for the stale one to be gone.
    proc = daemon_process(remote=panel.url, write_limit=1, verify_interval=0, **backups)
    await proc.start()
    server = node.random_server(16 * MIB, files=4)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert proc.proc is not None
    daemon_pid = proc.proc.pid
    await wait_until(
        lambda: restic_processes("backup", daemon_pid), "restic backup to run", timeout=30
    )
    (child,) = restic_processes("backup", daemon_pid)
    data = tmp_path / "repo" / "data"
    await wait_until(
        lambda: any(p.is_file() for p in data.rglob("*")), "restic to write data", timeout=30
    )

    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    # At once, not when its upload ends (16 s at this rate): an orphaned restic would still
    # write the snapshot of a backup reported failed.
    await wait_until(lambda: not alive(child), "restic to die with the daemon", timeout=2)
    assert list((tmp_path / "repo" / "locks").iterdir())  # the lock it could not remove
    assert panel.reports(backup) == []

    proc.config["system"]["backups"]["write_limit"] = 0
    await proc.start()
    report = (await panel.wait_report(backup, timeout=60)).json
    assert report["successful"] is False and report["size"] == 0
    assert snapshots(backups["restic"], f"backup:{backup}") == []
    # The stale lock is gone and the repository is whole: the next backup succeeds.
    await wait_until(
        lambda: not list((tmp_path / "repo" / "locks").iterdir()), "the stale lock", timeout=30
    )
    check = oracle(backups["restic"], "check")
    assert check.returncode == 0, check.stderr
    again = new_uuid()
    assert await proc.post_backup(server, again) == 202
    assert (await panel.wait_report(again, timeout=90)).json["successful"] is True
    await proc.stop()
