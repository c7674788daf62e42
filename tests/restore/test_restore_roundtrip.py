"""Backup then restore: the same tree, with GNU tar as the oracle; truncate vs overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from restore_helpers import snapshot

from wingsbak.archive import archive_to_file
from wingsbak.archive.extract import (
    Cancelled,
    RestoreProgress,
    extract_archive,
    restore_archive_file,
)

MTIME = 1_650_000_000


def build_tree(root: Path) -> None:
    (root / "world" / "region").mkdir(parents=True)
    (root / "world" / "region" / "r.0.0.mca").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "server.properties").write_text("motd=hi\n")
    (root / "start.sh").write_text("#!/bin/sh\n")
    (root / "start.sh").chmod(0o755)
    (root / "secret.txt").write_text("s")
    (root / "secret.txt").chmod(0o600)
    (root / "empty").mkdir()
    (root / ("x" * 150)).write_text("a long name needs a pax header")
    (root / "caf\u00e9.txt").write_text("utf-8 name")
    (root / "zero").write_bytes(b"")
    (root / "link-to-props").symlink_to("server.properties")
    (root / "world" / "up").symlink_to("../start.sh")
    (root / "dangling").symlink_to("no/such/file")
    # A path in the game container's mount namespace: restored as a link, never followed.
    (root / "abs-link").symlink_to("/home/container/server.properties")
    (root / "ro").mkdir()
    (root / "ro" / "inside").write_text("in a read-only directory")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(Path(dirpath, name), (MTIME, MTIME + len(name)), follow_symlinks=False)
    (root / "ro").chmod(0o555)


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    out = tmp_path / "backup.tar.gz"
    archive_to_file(src, out)
    return src, out


def test_backup_then_restore_gives_the_same_tree_as_tar(
    tmp_path: Path, archive: tuple[Path, Path]
) -> None:
    src, out = archive
    dest = tmp_path / "dest"
    progress: list[RestoreProgress] = []
    result = restore_archive_file(out, dest, progress=progress.append)
    expected = snapshot(src)
    assert snapshot(dest) == expected
    oracle = tmp_path / "oracle"
    oracle.mkdir()
    subprocess.run(["tar", "-xzf", str(out), "-C", str(oracle)], check=True)
    assert snapshot(oracle) == expected
    assert result.files == 8
    assert result.symlinks == 4
    assert result.directories == 4
    assert result.skipped == 0
    assert result.bytes_read == out.stat().st_size
    assert result.bytes_written == sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert progress[-1].bytes_read == progress[-1].bytes_total == out.stat().st_size
    assert not [p for p in dest.rglob(".wingsbak-restore-*")]


def test_overwrite_keeps_other_files_and_truncate_removes_them(
    tmp_path: Path, archive: tuple[Path, Path]
) -> None:
    src, out = archive
    dest = tmp_path / "dest"
    (dest / "world").mkdir(parents=True)
    (dest / "server.properties").write_text("old")
    (dest / "keep.txt").write_text("player data not in the backup")
    (dest / "world" / "extra.dat").write_text("x")
    restore_archive_file(out, dest)
    assert (dest / "server.properties").read_text() == "motd=hi\n"
    assert (dest / "keep.txt").exists()
    assert (dest / "world" / "extra.dat").exists()

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("must survive")
    (dest / "to-outside").symlink_to(outside)
    inode = dest.stat().st_ino
    restore_archive_file(out, dest, truncate=True)
    assert snapshot(dest) == snapshot(src)
    assert dest.stat().st_ino == inode  # emptied, not replaced
    assert (outside / "precious").read_text() == "must survive"


def test_cli_restore_truncate_prints_json(tmp_path: Path, archive: tuple[Path, Path]) -> None:
    src, out = archive
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale").write_text("gone after --truncate")
    proc = subprocess.run(
        [sys.executable, "-m", "wingsbak", "restore", str(out), str(dest), "--truncate"],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(proc.stdout)
    assert report["dest"] == str(dest)
    assert report["files"] == 8
    assert report["skipped"] == 0
    assert snapshot(dest) == snapshot(src)


def test_cli_restore_of_a_corrupt_archive_fails_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(4000))
    proc = subprocess.run(
        [sys.executable, "-m", "wingsbak", "restore", str(bad), str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("wingsbak: ")
    assert "Traceback" not in proc.stderr


def test_cancel_stops_the_restore(tmp_path: Path, archive: tuple[Path, Path]) -> None:
    _, out = archive
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        restore_archive_file(out, tmp_path / "dest", cancel=cancel)
    assert not [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]


def test_write_limit_and_owner_still_restore_everything(
    tmp_path: Path, archive: tuple[Path, Path]
) -> None:
    src, out = archive
    dest = tmp_path / "dest"
    owner = (os.getuid() or 4321, os.getgid() or 4321)
    with out.open("rb") as f:
        result = extract_archive(f, dest, write_limit=1000, owner=owner)
    assert snapshot(dest) == snapshot(src)
    assert result.skipped == 0
    if os.geteuid() == 0:
        for p in [dest, *dest.rglob("*")]:
            if p == dest:
                continue
            st = p.lstat()
            assert (st.st_uid, st.st_gid) == owner, p


def test_restore_without_isal_uses_zlib(tmp_path: Path, archive: tuple[Path, Path]) -> None:
    """A machine without ISA-L wheels: the zlib fallback restores the same tree."""
    src, out = archive
    dest = tmp_path / "dest"
    code = (
        "import sys; sys.modules['isal'] = None\n"  # makes 'import isal' fail, as when absent
        "from wingsbak.archive import codecs as g, extract as e\n"
        "assert not g.HAVE_ISAL\n"
        f"e.restore_archive_file({str(out)!r}, {str(dest)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert snapshot(dest) == snapshot(src)
