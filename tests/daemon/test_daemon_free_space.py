"""Backups never fill the node (issue 22, section 4), a real daemon process with its backup
directory on a small tmpfs: a backup whose estimate would leave less than
``min_free_space`` is refused at once (reported failed while another backup still holds the
only slot), for the local store and for the panel's pre-signed flow, with nothing written;
a backup that runs out of space anyway (its estimate, the last backup, was too small) fails,
leaves nothing behind and never touches the other backups."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, auth, mounted_tmpfs, new_uuid

MIB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs for the backup directory; skipped where mounting is not permitted."""
    with mounted_tmpfs(tmp_path / "small", "8m", ",mode=0700") as mnt:
        yield mnt


@pytest.fixture
def start_on_small(
    daemon_process: Callable[..., DaemonProcess], panel: Panel, small_fs: Path
) -> Callable[..., Any]:
    async def start(**backups: Any) -> DaemonProcess:
        proc = daemon_process(remote=panel.url, **backups)
        proc.config["system"]["backup_directory"] = str(small_fs)
        await proc.start()
        return proc

    return start


def log_events(proc: DaemonProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in proc.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


def files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("adapter", ["wings", "s3"])
async def test_a_backup_that_would_fill_the_disk_is_refused_at_once(
    start_on_small, node: Node, panel: Panel, small_fs: Path, adapter: str
):
    # One slot, held by a slow backup of another server (4 MiB at 1 MiB/s).
    proc = await start_on_small(min_free_space="30%", max_concurrent=1, write_limit=1)
    holder = node.random_server(4 * MIB, files=2)
    held = new_uuid()
    assert await proc.post_backup(holder, held) == 202
    big = node.random_server(6 * MIB, files=3)  # 6 MiB + 30 % of 8 MiB kept > 8 MiB
    backup = new_uuid()
    if adapter == "s3":
        panel.register(big, backup, disk="s3")
    assert await proc.post_backup(big, backup, adapter=adapter) == 202
    report = await panel.wait_report(backup, timeout=30)
    # At once: the slow backup still holds the slot.
    assert panel.reports(held) == [], "the refusal waited for the slot"
    assert report.json["successful"] is False and report.json["size"] == 0
    [refused] = log_events(proc, "backup_refused_no_space")
    assert refused["backup"] == backup and refused["estimate_from"] == "server_files"
    assert refused["estimate_bytes"] == 6 * MIB
    assert refused["keep_bytes"] == int(0.3 * 8 * MIB)
    [failed] = log_events(proc, "backup_failed")
    assert failed["backup"] == backup and "not enough free space" in failed["error"]
    assert not (small_fs / big).exists()  # nothing written, not even its folder
    assert (await panel.wait_report(held, timeout=60)).json["successful"] is True
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proc.url}/metrics", headers=auth()) as r,
    ):
        assert "wingsbak_backups_refused_no_space_total 1.0" in await r.text()


async def test_a_disk_that_fills_during_the_backup_leaves_the_other_backups_alone(
    start_on_small, node: Node, panel: Panel, small_fs: Path
):
    """Its estimate is the server's last backup, which was small: the backup starts, the
    disk fills, and the backup fails with nothing left behind; the others are intact."""
    proc = await start_on_small()
    server = node.server({"server.properties": "motd=small\n"})
    other = node.random_server(1 * MIB, files=1)
    kept: dict[str, str] = {}
    for srv in (server, other):
        backup = new_uuid()
        assert await proc.post_backup(srv, backup) == 202
        report = await panel.wait_report(backup, timeout=30)
        assert report.json["successful"] is True
        kept[backup] = report.json["checksum"]
    archives = (".tar.gz", ".sha1")  # not the daemon's own state files
    before = {p: (small_fs / p).read_bytes() for p in files_of(small_fs) if p.endswith(archives)}
    (node.data / server / "world.bin").write_bytes(os.urandom(12 * MIB))  # more than fits
    grown = new_uuid()
    assert await proc.post_backup(server, grown) == 202
    report = await panel.wait_report(grown, timeout=60)
    assert report.json["successful"] is False
    assert not log_events(proc, "backup_refused_no_space")  # it did start
    [failed] = log_events(proc, "backup_failed")
    assert failed["backup"] == grown
    left = files_of(small_fs)
    assert not [p for p in left if grown in p or p.endswith(".part")], left
    after = {p: (small_fs / p).read_bytes() for p in left if p.endswith(archives)}
    assert after == before
    for backup, checksum in kept.items():
        [archive] = [small_fs / p for p in left if p.endswith(f"{backup}.tar.gz")]
        assert hashlib.sha1(archive.read_bytes()).hexdigest() == checksum
        assert Path(f"{archive}.sha1").read_text().split()[0] == checksum
