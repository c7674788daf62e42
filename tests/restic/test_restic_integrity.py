"""A restic backup reported successful is whole: a repeated uuid is refused and a delete
forgets every snapshot of its backup; an entry restic cannot read fails the backup (unless
allow_skipped); a backup deduplicated against a pack the repository lost fails; a parent
snapshot forgotten outside the daemon costs no backup; a prune refused by another restic's
lock is tried again. The real restic binary and the real daemon."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.daemon_helpers import (
    WITHOUT_DAC_OVERRIDE,
    Daemon,
    DaemonProcess,
    Node,
    Panel,
    auth,
    download_claims,
    free_port,
    new_uuid,
    sign,
    wait_until,
)
from tests.support.restic_helpers import (
    listed,
    log_events,
    needs_restic,
    oracle,
    oracle_env,
    restic_backups,
    snapshots,
)
from wingsbak.appkeys import STORES

pytestmark = needs_restic
MIB = 1024 * 1024


async def backed_up(d: Daemon, panel: Panel, server: str) -> str:
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    report = (await panel.wait_report(backup, timeout=60)).json
    assert report["successful"] is True, report
    return backup


async def delete(d: Daemon, server: str, backup: str) -> int:
    async with d.request("DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()) as r:
        return r.status


# -- a backup uuid names one snapshot ----------------------------------------------------------


async def test_a_repeated_backup_uuid_is_refused(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, **block)
    server = node.server()
    backup = await backed_up(d, panel, server)
    body = {"adapter": "wings", "uuid": backup, "ignore": ""}
    # Again for the same server, and for another one: as for a .tar.gz on the node's disk.
    for target in (server, node.server()):
        status, answer = await d.post(f"/api/servers/{target}/backup", body)
        assert status == 409, answer
    assert len(snapshots(block["restic"], f"backup:{backup}")) == 1


async def test_a_delete_forgets_every_snapshot_of_its_backup(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, **block)
    server = node.server()
    backup = await backed_up(d, panel, server)
    # A second snapshot under the same uuid, as an earlier version saved for a repeated one.
    done = subprocess.run(
        ["restic", "backup", "--tag", f"server:{server},backup:{backup}", "."],
        cwd=node.data / server,
        env=oracle_env(block["restic"]),
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert len(snapshots(block["restic"], f"backup:{backup}")) == 2

    assert await delete(d, server, backup) == 204
    await wait_until(
        lambda: snapshots(block["restic"], f"backup:{backup}") == [], "the forgets", timeout=60
    )
    assert await delete(d, server, backup) == 404


# -- entries restic cannot read ----------------------------------------------------------------


@pytest.fixture
def locked_server(node: Node) -> Iterator[str]:
    server = node.server({"server.properties": "motd=hello\n", "world/level.dat": "level"})
    locked = node.data / server / "locked"
    locked.mkdir()
    (locked / "inside.txt").write_text("inside")
    locked.chmod(0o000)
    yield server
    locked.chmod(0o755)


@pytest.fixture
def unprivileged(node: Node) -> Iterator[Callable[..., DaemonProcess]]:
    """A daemon process (and its restic) that cannot read a chmod 000 directory, as in
    tests/daemon/test_daemon_skipped.py."""
    made: list[DaemonProcess] = []

    def make(remote: str, **backups: Any) -> DaemonProcess:
        config = node.config_dict(remote=remote, port=free_port(), **backups)
        log = node.root / f"daemon-{len(made)}.log"
        made.append(DaemonProcess(node, config, log, command_prefix=WITHOUT_DAC_OVERRIDE))
        return made[-1]

    yield make
    for p in made:
        p.kill_if_running()


# "": restic walks the server's top entries itself; a rule: wingsbak's walker lists the files.
WALKERS = pytest.mark.parametrize("ignore", ["", "*.log"], ids=["restic-walks", "wingsbak-walks"])


@WALKERS
async def test_an_unreadable_directory_fails_a_restic_backup(
    unprivileged: Callable[..., DaemonProcess],
    panel: Panel,
    locked_server: str,
    tmp_path: Path,
    ignore: str,
) -> None:
    backups = restic_backups(tmp_path)
    proc = unprivileged(panel.url, **backups)
    await proc.start()
    backup = new_uuid()
    assert await proc.post_backup(locked_server, backup, ignore=ignore) == 202
    report = (await panel.wait_report(backup, timeout=60)).json
    assert report["successful"] is False, report
    assert report["checksum"] == "" and report["size"] == 0
    # A snapshot restic saved without the directory is forgotten.
    await wait_until(
        lambda: snapshots(backups["restic"], f"backup:{backup}") == [], "the forget", timeout=60
    )
    assert await proc.stop() == 0
    (failed,) = log_events(proc.log_path, "backup_failed")
    assert "cannot read 'locked'" in failed["error"], failed
    assert "Permission denied" in failed["error"], failed


@WALKERS
async def test_allowed_a_restic_backup_leaves_it_out_and_counts_it(
    unprivileged: Callable[..., DaemonProcess],
    panel: Panel,
    locked_server: str,
    tmp_path: Path,
    ignore: str,
) -> None:
    backups = restic_backups(tmp_path)
    proc = unprivileged(panel.url, allow_skipped=True, **backups)
    await proc.start()
    backup = new_uuid()
    assert await proc.post_backup(locked_server, backup, ignore=ignore) == 202
    report = (await panel.wait_report(backup, timeout=60)).json
    assert report["successful"] is True, report
    assert await proc.stop() == 0
    (snap,) = snapshots(backups["restic"], f"backup:{backup}")
    names = listed(backups["restic"], snap["id"])
    assert {"server.properties", "world/level.dat"} <= set(names)
    assert "locked/inside.txt" not in names
    (completed,) = log_events(proc.log_path, "backup_completed")
    assert completed["skipped"] == 1, completed
    skipped = {e["path"]: e["reason"] for e in log_events(proc.log_path, "archive_entry_skipped")}
    assert "Permission denied" in skipped["locked"], skipped


# -- a repository that lost data ---------------------------------------------------------------


async def test_a_backup_deduplicated_against_a_lost_pack_fails(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, **block)
    server = node.random_server(2 * MIB, files=2)
    first = await backed_up(d, panel, server)
    # A data pack lost (a disk error, a sync tool, an operator's rm): the index still names
    # its blobs, so restic stores them no more.
    packs = [p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()]
    max(packs, key=lambda p: p.stat().st_size).unlink()

    with capture_logs() as logs:
        unchanged = new_uuid()
        assert (await d.post_backup(server, unchanged))[0] == 202
        report = (await panel.wait_report(unchanged, timeout=60)).json
        assert report["successful"] is False, report
        # Checked as long as the repository is damaged, also when a backup adds data.
        (node.data / server / "new.txt").write_text("new")
        added = new_uuid()
        assert (await d.post_backup(server, added))[0] == 202
        assert (await panel.wait_report(added, timeout=60)).json["successful"] is False
    damaged = [e for e in logs if e["event"] == "restic_repository_damaged"]
    assert len(damaged) == 2 and damaged[0]["log_level"] == "error"
    assert any("does not exist" in line for line in damaged[0]["errors"]), damaged
    failed = [e["error"] for e in logs if e["event"] == "backup_failed"]
    assert len(failed) == 2 and "repository is damaged" in failed[0]
    for backup in (unchanged, added):
        await wait_until(
            lambda b=backup: snapshots(block["restic"], f"backup:{b}") == [],
            "the snapshot forgotten",
            timeout=60,
        )
        token = sign(download_claims(server, backup))
        async with d.request("GET", "/download/backup", params={"token": token}) as r:
            assert r.status == 404
    assert len(snapshots(block["restic"], f"backup:{first}")) == 1


# -- a parent snapshot gone -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["forgotten", "reinitialised"])
async def test_a_parent_gone_outside_the_daemon_costs_no_backup(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path, how: str
) -> None:
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, **block)
    server = node.random_server(256 * 1024, files=2)
    first = await backed_up(d, panel, server)
    if how == "forgotten":  # an operator's retention job, or another node's
        (snap,) = snapshots(block["restic"], f"backup:{first}")
        done = oracle(block["restic"], "forget", snap["id"])
    else:  # a repository initialised again at the same path
        shutil.rmtree(tmp_path / "repo")
        done = oracle(block["restic"], "init")
    assert done.returncode == 0, done.stderr

    with capture_logs() as logs:
        second = await backed_up(d, panel, server)
    (gone,) = [e for e in logs if e["event"] == "restic_parent_gone"]
    assert gone["server"] == server
    (snap,) = snapshots(block["restic"], f"backup:{second}")
    names = set(listed(block["restic"], snap["id"]))
    assert {"world/region-0.mca", "world/region-1.mca"} <= names
    # The next one has a parent again: the new snapshot.
    third = await backed_up(d, panel, server)
    (snap3,) = snapshots(block["restic"], f"backup:{third}")
    assert snap3["parent"] == snap["id"]


# -- maintenance ------------------------------------------------------------------------------


async def test_a_prune_refused_by_a_live_lock_is_tried_again(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path, prune_interval=15)
    d = await start_daemon(remote=panel.url, **block)
    store = d.app[STORES].by_name("restic")
    servers = [node.random_server(MIB, files=1) for _ in range(2)]
    kept = [await backed_up(d, panel, s) for s in servers]
    assert await delete(d, servers[0], kept[0]) == 204
    await wait_until(lambda: store.prunes == 1, "the first prune", timeout=60)

    locks = tmp_path / "repo" / "locks"
    with capture_logs() as logs:
        assert await delete(d, servers[1], kept[1]) == 204
        await wait_until(
            lambda: any(e["event"] == "restic_snapshots_forgotten" for e in logs), "the forget"
        )
        # The next prune is due 15 s after the first. Before then another restic takes the
        # repository (another node's backup on a shared repository): one reading its stdin.
        holder = subprocess.Popen(
            ["restic", "backup", "--stdin", "--host", "another-node"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=oracle_env(block["restic"]),
        )
        try:
            await wait_until(lambda: any(locks.iterdir()), "the other restic's lock")
            await wait_until(
                lambda: any(e["event"] == "restic_prune_failed" for e in logs),
                "the prune to be refused",
                timeout=60,
            )
            assert store.prunes == 1
        finally:
            # restic removes its lock and saves nothing (0.18 once its read of stdin ends).
            holder.send_signal(signal.SIGINT)
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(30)
        await wait_until(lambda: store.prunes == 2, "the prune tried again", timeout=90)
    refused = [e for e in logs if e["event"] == "restic_prune_failed"]
    assert "locked" in refused[0]["error"], refused
    assert not any(locks.iterdir())
