"""Only the stagings the daemon made (their name and the marker inside) are left out of
backups and acted on by recovery: a player's folder called ``.wingsbak-restore-*``, even one
named exactly like a staging, is backed up (``.tar.gz`` and restic alike), restored, and never
touched by recovery."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from restore_helpers import snapshot

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid
from tests.support.restic_helpers import listed, needs_restic, restic_backups
from wingsbak.archive import archive_to_file
from wingsbak.archive.extract import recover_stagings, restore_archive_file
from wingsbak.archive.staging import STAGING_PREFIX, Staging


def tar_names(archive: Path) -> set[str]:
    out = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True)
    return {n.removeprefix("./").rstrip("/") for n in out.stdout.splitlines()}


def make_staging(root: Path, label: str) -> Path:
    """A staging directory as the engine makes it, with a restored file in its tree."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        staging = Staging(fd, label)
        staging.tree()
        os.close(staging.tree_fd)
        os.close(staging.fd)
    finally:
        os.close(fd)
    path = root / os.fsdecode(staging.name)
    (path / "tree" / "restored.txt").write_text("half a restore")
    return path


def players_folders(root: Path) -> tuple[str, str]:
    """A player's folder with the prefix, and one named exactly like a staging (even laid out
    like one), neither made by the daemon."""
    mine = f"{STAGING_PREFIX}foo"
    (root / mine).mkdir(parents=True)
    (root / mine / "notes.txt").write_text("my notes")
    exact = f"{STAGING_PREFIX}{new_uuid()}"
    (root / exact / "old").mkdir(parents=True)
    (root / exact / "old" / "level.dat").write_text("a player's level")
    (root / exact / "tree").mkdir()
    return mine, exact


async def test_a_players_staging_named_folders_are_backed_up_restored_and_left_by_recovery(
    daemon_process: Callable[..., DaemonProcess], node: Node, panel: Panel
) -> None:
    server = node.server({"server.properties": "motd=hi\n"})
    root = node.data / server
    mine, exact = players_folders(root)
    before = snapshot(root)
    proc = daemon_process(remote=panel.url)
    await proc.start()
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    names = tar_names(node.archive(server, backup))
    assert {f"{mine}/notes.txt", f"{exact}/old/level.dat", f"{exact}/tree"} <= names
    assert await proc.stop() == 0

    # A restore of this server died (no staging of its own yet): recovery looks at the root.
    died = new_uuid()
    (node.backups / ".wingsbak-journal.json").write_text(
        json.dumps({died: {"kind": "restore", "server": server}})
    )
    panel.ensure(server, died)  # the panel's record of the backup it asked to restore
    await node.outbox_settled()
    await proc.start()
    assert (await panel.wait_report(died, restore=True)).json == {"successful": False}
    assert snapshot(root) == before

    # Gone, then brought back by a truncating restore of the backup.
    for name in (mine, exact):
        subprocess.run(["rm", "-rf", str(root / name)], check=True)
    assert await proc.post_restore(server, backup) == 202
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": True}
    assert snapshot(root) == before
    assert await proc.stop() == 0


def test_the_engine_stages_beside_a_players_folder_of_the_same_name(tmp_path: Path) -> None:
    """A player's folder named exactly as the restore's staging would be is not the
    restore's: it is replaced with the rest of the server, never used or deleted early."""
    root = tmp_path / "server"
    (root / f"{STAGING_PREFIX}lbl").mkdir(parents=True)
    (root / f"{STAGING_PREFIX}lbl" / "notes.txt").write_text("my notes")
    src = tmp_path / "src"
    (src / f"{STAGING_PREFIX}lbl").mkdir(parents=True)
    (src / f"{STAGING_PREFIX}lbl" / "notes.txt").write_text("the backup's notes")
    (src / "server.properties").write_text("motd=restored\n")
    archive = tmp_path / "a.tar.gz"
    archive_to_file(src, archive)
    restore_archive_file(archive, root, truncate=True, label="lbl")
    assert snapshot(root) == snapshot(src)


async def test_recovery_leaves_a_player_folder_and_finishes_an_older_versions_staging(
    daemon_process: Callable[..., DaemonProcess], node: Node, panel: Panel
) -> None:
    """An unmarked staging an older version left for a restore the journal says died (this
    daemon's own, holding only a staging's parts) is still undone; a player's folder of the
    same kind, for a restore the journal does not name, is left alone."""
    server = node.server({"server.properties": "motd=hi\n"})
    root = node.data / server
    died = new_uuid()
    older = root / f"{STAGING_PREFIX}{died}"
    (older / "old" / "world").mkdir(parents=True)
    (older / "old" / "world" / "level.dat").write_text("the old world")
    (older / "tree").mkdir()
    _mine, exact = players_folders(root)
    (node.backups / ".wingsbak-journal.json").write_text(
        json.dumps({died: {"kind": "restore", "server": server}})
    )
    panel.ensure(server, died)  # the panel's record of the backup it asked to restore
    proc = daemon_process(remote=panel.url)
    await proc.start()
    assert (await panel.wait_report(died, restore=True)).json == {"successful": False}
    assert not older.exists()
    assert (root / "world" / "level.dat").read_text() == "the old world"
    assert (root / exact / "old" / "level.dat").read_text() == "a player's level"
    assert await proc.stop() == 0


def test_a_marked_staging_is_left_out_and_recovered_a_players_folder_is_not(
    tmp_path: Path,
) -> None:
    root = tmp_path / "server"
    root.mkdir()
    (root / "server.properties").write_text("motd=hi\n")
    mine, exact = players_folders(root)
    staging = make_staging(root, new_uuid())
    archive = tmp_path / "a.tar.gz"
    archive_to_file(root, archive)
    names = tar_names(archive)
    assert f"{mine}/notes.txt" in names
    assert f"{exact}/old/level.dat" in names
    assert not [n for n in names if n.startswith(staging.name)]
    [found] = recover_stagings(root)
    assert (found.name, found.committed, found.error) == (staging.name, False, "")
    assert sorted(p.name for p in root.iterdir()) == sorted([mine, exact, "server.properties"])


@needs_restic
async def test_restic_backups_leave_out_the_same_stagings_as_tar_gz(
    start_daemon: Callable[..., Any], node: Node, panel: Panel, tmp_path: Path
) -> None:
    """restic's list comes from the root's entries (no ignore rules) or from the walker
    (rules): both keep a player's folders and leave out a marked staging."""
    server = node.server({"server.properties": "motd=hi\n"})
    root = node.data / server
    mine, exact = players_folders(root)
    staging = make_staging(root, new_uuid())
    config = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, **config)
    for ignore in ("", "*.log"):
        backup = new_uuid()
        assert (await d.post_backup(server, backup, ignore=ignore))[0] == 202
        report = (await panel.wait_report(backup, timeout=60)).json
        assert report["successful"] is True
        paths = listed(config["restic"], report["checksum"])  # the snapshot's id
        assert f"{mine}/notes.txt" in paths, (ignore, sorted(paths))
        assert f"{exact}/old/level.dat" in paths, (ignore, sorted(paths))
        assert not [p for p in paths if p.startswith(staging.name)], (ignore, sorted(paths))
