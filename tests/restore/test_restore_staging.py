"""A truncating restore is staged and swapped in only once the whole archive is verified: a
cut archive, a full disk, a stop or a kill -9 leave the server exactly as it was, and nothing
of the restore's own stays behind. A server root that is a symlink is never restored into."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from restore_helpers import (
    Serve,
    breaks_half_way,
    restore_leftovers,
    serves,
    serves_chunked,
    snapshot,
)

from tests.support.daemon_helpers import (
    Daemon,
    DaemonProcess,
    Node,
    Panel,
    mounted_tmpfs,
    new_uuid,
    wait_until,
)
from wingsbak.archive import archive_to_file
from wingsbak.archive.checksum import sidecar_path
from wingsbak.archive.extract import (
    NoSpace,
    RestoreError,
    extract_archive,
    recover_stagings,
    restore_archive_file,
)
from wingsbak.archive.staging import STAGING_PREFIX, Staging

SERVER = "3b9a7c1e-2d4f-4e6a-8b0c-1d2e3f4a5b6c"
MIB = 1024 * 1024


def hundred_files(root: Path) -> None:
    for i in range(100):
        (root / "world" / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (root / "world" / f"d{i % 10}" / f"f{i}.dat").write_bytes(os.urandom(40_000))
    (root / "server.properties").write_text("motd=the server before\n")
    (root / "abs-link").symlink_to("/home/container/server.properties")


def fifty_file_archive(tmp_path: Path) -> bytes:
    src = tmp_path / "fifty"
    for i in range(50):
        (src / "plugins").mkdir(parents=True, exist_ok=True)
        (src / "plugins" / f"p{i}.jar").write_bytes(os.urandom(100_000))
    out = tmp_path / "fifty.tar.gz"
    archive_to_file(src, out)
    return out.read_bytes()


@pytest.fixture
def root(node: Node) -> Path:
    root = node.data / node.server({"placeholder": "x"}, name=SERVER)
    (root / "placeholder").unlink()
    hundred_files(root)
    return root


@pytest.fixture
async def trusting_daemon(start_daemon: Callable[..., Any], panel: Panel) -> Daemon:
    d: Daemon = await start_daemon(remote=panel.url, restore_host_allowlist=["127.0.0.1"])
    return d


async def restore_report(daemon: Daemon, panel: Panel, backup: str, **body: Any) -> Any:
    status, answer = await daemon.post_restore(SERVER, backup, truncate_directory=True, **body)
    assert status == 202, answer
    return (await panel.wait_report(backup, restore=True)).json


@pytest.mark.parametrize("how", ["with-length", "chunked", "connection-dies"])
async def test_a_cut_download_leaves_the_server_as_it_was(
    trusting_daemon: Daemon, panel: Panel, root: Path, serve: Serve, tmp_path: Path, how: str
) -> None:
    archive = fifty_file_archive(tmp_path)
    half = archive[: len(archive) // 2]
    handler = {
        "with-length": serves(half),  # a cut S3 object: its Content-Length is honest
        "chunked": serves_chunked(half),
        "connection-dies": breaks_half_way(archive),
    }[how]
    before = snapshot(root)
    backup = new_uuid()
    report = await restore_report(
        trusting_daemon, panel, backup, adapter="s3", download_url=await serve(handler)
    )
    assert report == {"successful": False}
    assert snapshot(root) == before
    assert restore_leftovers(root) == []


async def test_a_cut_local_archive_without_sidecar_leaves_the_server_as_it_was(
    daemon: Daemon, panel: Panel, node: Node, root: Path
) -> None:
    backup = new_uuid()
    assert (await daemon.post_backup(SERVER, backup))[0] == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    archive = node.archive(SERVER, backup)
    sidecar_path(archive, "sha1").unlink()  # Wings' layout: no sidecar to check against
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    (root / "server.properties").write_text("motd=changed since the backup\n")
    (root / "new-since.txt").write_text("made after the backup")
    before = snapshot(root)
    assert await restore_report(daemon, panel, backup) == {"successful": False}
    assert snapshot(root) == before
    assert restore_leftovers(root) == []


async def test_a_good_download_replaces_the_server_and_leaves_no_staging(
    trusting_daemon: Daemon, panel: Panel, root: Path, serve: Serve, tmp_path: Path
) -> None:
    archive = fifty_file_archive(tmp_path)
    url = await serve(serves_chunked(archive))
    backup = new_uuid()
    report = await restore_report(trusting_daemon, panel, backup, adapter="s3", download_url=url)
    assert report == {"successful": True}
    assert sorted(p.name for p in root.iterdir()) == ["plugins"]
    assert len(list((root / "plugins").iterdir())) == 50


@pytest.mark.parametrize("source", ["local", "chunked-download"])
async def test_a_disk_that_cannot_hold_both_fails_before_deleting(
    start_daemon: Callable[..., Any],
    panel: Panel,
    node: Node,
    serve: Serve,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
) -> None:
    """The local archive's unpacked size is known: refused by the free-space check. The
    chunked download's is not: its staging fills the disk, and is removed."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"region-{i}.mca").write_bytes(os.urandom(MIB))
    backup = new_uuid()
    archive = node.archive(SERVER, backup)
    archive.parent.mkdir(parents=True)
    archive_to_file(src, archive)
    with mounted_tmpfs(node.data / SERVER, "10m") as root:
        for i in range(6):
            (root / f"old-{i}.mca").write_bytes(os.urandom(MIB))
        before = snapshot(root)
        daemon: Daemon = await start_daemon(
            remote=panel.url, restore_host_allowlist=["127.0.0.1"]
        )
        body: dict[str, Any] = {}
        if source == "chunked-download":
            url = await serve(serves_chunked(archive.read_bytes()))
            body = {"adapter": "s3", "download_url": url}
            backup = new_uuid()
        assert await restore_report(daemon, panel, backup, **body) == {"successful": False}
        assert snapshot(root) == before
        assert restore_leftovers(root) == []
    out = capsys.readouterr().out
    assert "restore_no_space" in out
    assert "nothing was changed" in out or "disk filled up" in out


def test_no_space_is_refused_by_the_engine_before_anything_is_written(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 * MIB))
    archive = tmp_path / "a.tar.gz"
    archive_to_file(src, archive)
    with mounted_tmpfs(tmp_path / "server", "4m") as root:
        (root / "old").write_bytes(os.urandom(2 * MIB))
        before = snapshot(root)
        with pytest.raises(NoSpace, match="nothing was changed"):
            restore_archive_file(archive, root, truncate=True)
        assert snapshot(root) == before
        assert restore_leftovers(root) == []


async def test_a_symlinked_server_root_is_refused(
    daemon: Daemon, panel: Panel, node: Node, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("not the server's")
    server = new_uuid()
    (node.data / server).symlink_to(elsewhere)
    backup = new_uuid()
    archive = node.archive(server, backup)
    archive.parent.mkdir(parents=True)
    archive_to_file(tmp_path / "elsewhere", archive)
    status, _ = await daemon.post_restore(server, backup, truncate_directory=True)
    assert status == 404
    status, _ = await daemon.post_backup(server, new_uuid())
    assert status == 404
    # The engine refuses it too (the root may be swapped for a link after the API's check).
    with pytest.raises(RestoreError, match="symlink"):
        restore_archive_file(archive, node.data / server, truncate=True)
    assert [p.name for p in elsewhere.iterdir()] == ["precious"]


def test_a_server_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("a file")
    archive = tmp_path / "a.tar.gz"
    (tmp_path / "src").mkdir()
    archive_to_file(tmp_path / "src", archive)
    with pytest.raises(RestoreError, match="not a directory"):
        restore_archive_file(archive, tmp_path / "root")


def make_staging(root: Path, label: str) -> Path:
    """A staging directory as the engine makes it (marked as the daemon's own)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        staging = Staging(fd, label)
        os.close(staging.fd)
        return root / os.fsdecode(staging.name)
    finally:
        os.close(fd)


def test_the_staging_directory_is_not_in_backups(tmp_path: Path) -> None:
    root = tmp_path / "server"
    root.mkdir()
    (make_staging(root, "x") / "tree").mkdir()
    (root / f"{STAGING_PREFIX}x" / "tree" / "f").write_text("staged")
    (root / "real.txt").write_text("the server's")
    archive = tmp_path / "a.tar.gz"
    archive_to_file(root, archive)
    names = subprocess.run(
        ["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [n for n in names if "wingsbak-restore" in n] == []
    assert "real.txt" in names or "./real.txt" in names


@pytest.mark.parametrize("phase", ["staging", "moving-out", "moving-in", "older-moving-in"])
def test_recovery_puts_the_old_entries_back_whatever_the_phase(tmp_path: Path, phase: str) -> None:
    """The states a kill -9 can leave, built as the engine builds them (an older version's
    had no list of the restored names: every entry of the root was a restored one)."""
    root = tmp_path / "server"
    root.mkdir()
    hundred_files(root)
    before = snapshot(root)
    stage = make_staging(root, new_uuid())
    (stage / "tree" / "plugins").mkdir(parents=True)
    (stage / "tree" / "plugins" / "new.jar").write_text("restored")
    (stage / f"{STAGING_PREFIX}123-7").write_bytes(b"half a file")
    if phase != "staging":
        (stage / "old").mkdir()
        os.rename(root / "world", stage / "old" / "world")
        if phase.endswith("moving-in"):
            for entry in list(root.iterdir()):
                if entry != stage:
                    os.rename(entry, stage / "old" / entry.name)
            if phase == "moving-in":
                (stage / "names").write_bytes(b"plugins\0")
            (stage / "swapping").mkdir()
            os.rename(stage / "tree" / "plugins", root / "plugins")
    assert [r.committed for r in recover_stagings(root)] == [False]
    assert snapshot(root) == before
    assert restore_leftovers(root) == []


@pytest.mark.parametrize("truncate", [True, False])
async def test_kill_9_mid_restore_then_restart_leaves_the_server_as_it_was(
    daemon_process: Any, node: Node, panel: Panel, tmp_path: Path, truncate: bool
) -> None:
    root = node.data / node.server({"placeholder": "x"}, name=SERVER)
    (root / "placeholder").unlink()
    hundred_files(root)
    src = tmp_path / "src"
    src.mkdir()
    (src / "world.mca").write_bytes(os.urandom(6 * MIB))
    backup = new_uuid()
    archive = node.archive(SERVER, backup)
    archive.parent.mkdir(parents=True)
    archive_to_file(src, archive)
    before = snapshot(root)
    proc: DaemonProcess = daemon_process(remote=panel.url, write_limit=1)
    await proc.start()
    assert await proc.post_restore(SERVER, backup, truncate_directory=truncate) == 202

    def staged_bytes() -> int:
        return sum(p.stat().st_size for p in root.glob(f"{STAGING_PREFIX}*/**/*") if p.is_file())

    await wait_until(lambda: staged_bytes() > MIB, "the restore to be half-way")
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    assert restore_leftovers(root) != []  # what recovery has to clean

    await proc.start()
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": False}
    await wait_until(lambda: restore_leftovers(root) == [], "recovery to clean up")
    assert snapshot(root) == before
    assert await proc.stop() == 0
    assert "interrupted_restore_reported" in proc.logs()


def test_extract_archive_refuses_to_stage_over_a_symlinked_staging_name(tmp_path: Path) -> None:
    """A server owner who plants ``.wingsbak-restore-<label>`` as a link to elsewhere gets
    the link removed, never followed."""
    root = tmp_path / "server"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    (root / f"{STAGING_PREFIX}lbl").symlink_to(elsewhere)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("restored")
    archive = tmp_path / "a.tar.gz"
    archive_to_file(src, archive)
    with open(archive, "rb") as f:
        extract_archive(f, root, truncate=True, label="lbl")
    assert (elsewhere / "keep").read_text() == "keep"
    assert sorted(p.name for p in root.iterdir()) == ["f"]


def test_a_swap_that_fails_half_way_puts_every_entry_back(tmp_path: Path) -> None:
    """A mount point inside the server root cannot be moved (EBUSY): the swap fails after
    moving the entries listed before it, and they all come back."""
    root = tmp_path / "server"
    root.mkdir()
    hundred_files(root)
    for name in "abcdefghij":
        (root / f"{name}.txt").write_text(name)
    src = tmp_path / "src"
    src.mkdir()
    (src / "restored.txt").write_text("new")
    archive = tmp_path / "a.tar.gz"
    archive_to_file(src, archive)
    with mounted_tmpfs(root / "f-mount", "1m") as mount:
        (mount / "inside").write_text("on another file system")
        before = snapshot(root)
        with pytest.raises(RestoreError, match="cannot move the restored files into place"):
            restore_archive_file(archive, root, truncate=True)
        assert snapshot(root) == before
        assert restore_leftovers(root) == []
