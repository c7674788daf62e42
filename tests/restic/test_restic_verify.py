"""Verified restic backups: the schedule's ``restic check --read-data-subset`` finds a damaged
pack and names the backups that use it (the real daemon process, the real restic);
``wingsbak verify`` reads one backup's snapshot whole; a check runs only while no restic job
runs, and jobs that come meanwhile wait for it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid, wait_until
from tests.support.restic_helpers import needs_restic, restic_backups, restic_processes
from tests.support.trust_helpers import log_events, metrics, wait_event
from wingsbak.appkeys import JOBS, STORES
from wingsbak.verify.schedule import slices

pytestmark = needs_restic
MIB = 1024 * 1024
WEEK = 7 * 86400


async def backed_up(proc: DaemonProcess, node: Node, panel: Panel) -> tuple[str, str]:
    server = node.random_server(3 * MIB, files=3)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    return server, backup


def data_packs(repo: Path) -> list[Path]:
    return sorted((repo / "data").glob("*/*"), key=lambda p: p.stat().st_mtime_ns)


def damage(pack: Path) -> None:
    pack.chmod(0o600)  # restic leaves its packs read-only
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x10
    pack.write_bytes(bytes(data))


async def verify_command(*args: str) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wingsbak", "verify", *args, stdout=subprocess.PIPE
    )
    out, _ = await p.communicate()
    assert p.returncode is not None
    return p.returncode, out.decode()


async def test_the_scheduled_check_finds_a_damaged_pack_and_names_its_backup(
    daemon_process, node: Node, panel: Panel, tmp_path: Path
) -> None:
    proc: DaemonProcess = daemon_process(
        remote=panel.url, verify_interval=0, **restic_backups(tmp_path)
    )
    await proc.start()
    first = await backed_up(proc, node, panel)
    packs_before = set(data_packs(tmp_path / "repo"))
    second = await backed_up(proc, node, panel)
    await proc.stop()
    # The second backup's biggest new pack: its file data, shared with no other backup.
    new = [p for p in data_packs(tmp_path / "repo") if p not in packs_before]
    damage(max(new, key=lambda p: p.stat().st_size))
    oracle = subprocess.run(
        ["restic", "check", "--read-data"],
        env={
            "PATH": "/usr/bin:/bin",
            "RESTIC_REPOSITORY": str(tmp_path / "repo"),
            "RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
            "RESTIC_CACHE_DIR": str(tmp_path / "oracle-cache"),
        },
        capture_output=True,
    )
    assert oracle.returncode != 0  # restic itself agrees the repository is damaged

    # A week's interval: one slice (the whole repository) per check; never checked: due now.
    proc.config["system"]["backups"]["verify_interval"] = WEEK
    await proc.start()
    line = await wait_event(
        proc.log_path, "backup_corrupt", timeout=120, store="restic", backup=second[1]
    )
    assert line["server"] == second[0]
    assert line["location"] == str(tmp_path / "repo")
    assert line["reason"].startswith("restic check: ") and "Fatal" not in line["reason"]
    named = {e["backup"] for e in log_events(proc.log_path, "backup_corrupt")}
    assert first[1] not in named
    m = await metrics(proc.url)
    assert m['wingsbak_backup_corrupt_total{store="restic"}'] >= 1
    assert m["wingsbak_backups_corrupt"] >= 1

    # On demand, one backup's snapshot read whole: the damaged one fails, the other passes.
    cfg = str(node.root / "cfg.yml")
    rc, out = await verify_command("--config", cfg, second[1])
    assert rc == 1 and out.startswith(f"CORRUPT    restic {second[0]}/{second[1]}"), out
    rc, out = await verify_command("--config", cfg, first[1])
    assert rc == 0 and "restic checked every blob" in out, out
    await proc.stop()


async def test_a_sound_repository_is_checked_one_slice_at_a_time(
    daemon_process, node: Node, panel: Panel, tmp_path: Path
) -> None:
    proc: DaemonProcess = daemon_process(
        remote=panel.url, verify_interval=0, **restic_backups(tmp_path)
    )
    await proc.start()
    await backed_up(proc, node, panel)
    await proc.stop()
    proc.config["system"]["backups"]["verify_interval"] = 3600  # 168 slices cover a week
    await proc.start()
    line = await wait_event(proc.log_path, "restic_verified", timeout=120)
    assert line["subset"] == "1/168"
    await wait_event(proc.log_path, "verify_pass_done", restic=True)
    state = (node.backups / ".wingsbak-verify.json").read_text()
    assert '"next": 2' in state and '"slices": 168' in state
    await proc.stop()


def test_slices_cover_a_week() -> None:
    assert slices(86400) == 7
    assert slices(3600) == 168
    assert slices(WEEK) == 1
    assert slices(10 * WEEK) == 1
    assert slices(1) == 256  # restic's bound


def backups_running() -> list[int]:
    """This test's own restic backups (the daemon runs in this process)."""
    return restic_processes("backup", os.getpid())


async def test_a_check_waits_for_running_jobs_and_new_jobs_wait_for_it(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    # 1 MiB/s to the repository: a backup runs for seconds.
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, write_limit=1, verify_interval=0, **block)
    store = d.app[STORES].by_name("restic")
    await asyncio.to_thread(store.checked.wait, 60)
    server = node.random_server(4 * MIB, files=4)
    running = new_uuid()
    assert (await d.post_backup(server, running))[0] == 202
    await wait_until(backups_running, "restic backup to run", timeout=30)
    seen: list[list[int]] = []
    store.run_exclusive(lambda: seen.append(backups_running()))
    assert (await panel.wait_report(running, timeout=60)).json["successful"] is True
    await wait_until(lambda: seen, "the exclusive task", timeout=30)
    assert seen == [[]]  # it ran once the backup was over, never beside it

    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(60)

    store.run_exclusive(hold)
    await asyncio.to_thread(started.wait, 30)
    waiting = new_uuid()
    assert (await d.post_backup(server, waiting))[0] == 202
    await wait_until(lambda: store._users == 0 and d.app[JOBS].running(), "the backup to wait")
    await asyncio.sleep(0.5)
    assert backups_running() == [] and panel.reports(waiting) == []
    release.set()
    assert (await panel.wait_report(waiting, timeout=60)).json["successful"] is True
