"""The clone a running game's backup reads (wingsbak.archive.clone): on a loop-mounted XFS
image it holds what the live tree's backup would (owners, modes, times, symlinks, holes, the
ignore rules, a .pteroignore that excludes itself), checked with GNU tar's listing of both
archives; ext4 refuses at once, leaving nothing; a clone is always removed (read-only
folders included), and the start-up sweep removes only what is marked as one."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon_helpers import mounted_xfs
from wingsbak.archive.archiver import archive_to_file
from wingsbak.archive.clone import (
    CLONE_PREFIX,
    CloneUnsupported,
    clone_tree,
    remove_clone,
    remove_clones,
)
from wingsbak.archive.ratelimit import Cancelled
from wingsbak.archive.rules import IgnoreRules

MIB = 1024 * 1024


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_xfs(tmp_path / "xfs.img", tmp_path / "xfs") as mnt:
        yield mnt


def make_tree(root: Path) -> None:
    (root / "world" / "region").mkdir(parents=True)
    (root / "world" / "region" / "r.0.0.mca").write_bytes(os.urandom(MIB + 17))
    (root / "empty.txt").write_bytes(b"")
    sparse = root / "world" / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(32 * MIB)
        f.write(b"data in the middle")
    (root / "cache").mkdir()
    (root / "cache" / "big.tmp").write_bytes(b"ignored")
    (root / ".pteroignore").write_text("cache/\n.pteroignore\n")
    os.symlink("world/region", root / "link-to-dir")
    os.symlink("/nowhere", root / "dangling")
    os.mkfifo(root / "pipe")
    (root / "readonly").mkdir()
    (root / "readonly" / "inside").write_text("x")
    (root / "script.sh").write_text("#!/bin/sh\n")
    if os.geteuid() == 0:
        os.chown(root / "script.sh", 1234, 5678)
        os.lchown(root / "dangling", 4321, 8765)
        os.chown(root / "world", 1000, 1000)
    os.chmod(root / "script.sh", 0o4755)  # after the chown, which would clear it
    os.chmod(root / "readonly", 0o555)
    for i, path in enumerate(sorted(root.rglob("*"))):
        if not path.is_symlink():
            os.utime(path, (1_600_000_000 + i, 1_500_000_000 + i))


def listing(archive: Path) -> list[str]:
    """GNU tar's verbose listing, numeric owners, sorted (the walk order may differ)."""
    out = subprocess.run(
        ["tar", "--numeric-owner", "--full-time", "-tvzf", str(archive)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(out.splitlines())


def test_the_clone_archives_as_the_live_tree(xfs: Path, tmp_path: Path):
    root = xfs / "server"
    root.mkdir()
    make_tree(root)
    rules = IgnoreRules.for_server(root)
    tree = clone_tree(root, xfs, "b1", rules)
    assert tree == xfs / f"{CLONE_PREFIX}b1" / "tree"
    assert stat.S_IMODE((xfs / f"{CLONE_PREFIX}b1").stat().st_mode) == 0o700
    assert not (tree / "cache").exists() and not (tree / "pipe").exists()
    assert (tree / ".pteroignore").read_text() == "cache/\n.pteroignore\n"
    live, cloned = tmp_path / "live.tar.gz", tmp_path / "clone.tar.gz"
    archive_to_file(root, live, rules)
    archive_to_file(tree, cloned, IgnoreRules.for_server(tree))
    assert listing(cloned) == listing(live)
    text = "\n".join(listing(live))
    assert "cache/big.tmp" not in text and "-rwsr-xr-x 1234/5678" in text
    # The hole stays a hole: the clone shares the extents.
    assert (tree / "world" / "sparse.bin").stat().st_blocks < 1024
    # The clone is independent of the game's next writes.
    (root / "world" / "region" / "r.0.0.mca").write_bytes(b"rewritten")
    assert (tree / "world" / "region" / "r.0.0.mca").stat().st_size == MIB + 17
    remove_clone(tree)
    assert not (xfs / f"{CLONE_PREFIX}b1").exists()


def test_ext4_cannot_clone_and_nothing_is_left(tmp_path: Path):
    root = tmp_path / "server"
    root.mkdir()
    (root / "a").write_bytes(b"x" * 10)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True)
    if fs.stdout.strip() in ("xfs", "btrfs"):
        pytest.skip(f"{tmp_path} is on {fs.stdout.strip()}, which clones")
    with pytest.raises(CloneUnsupported):
        clone_tree(root, tmp_path, "b2", IgnoreRules())
    assert not list(tmp_path.glob(f"{CLONE_PREFIX}*"))


def test_another_file_system_is_refused_before_anything_is_made(xfs: Path, tmp_path: Path):
    root = tmp_path / "server"  # not on the XFS image
    root.mkdir()
    with pytest.raises(CloneUnsupported, match="another file system"):
        clone_tree(root, xfs, "b3", IgnoreRules())
    assert not list(xfs.glob(f"{CLONE_PREFIX}*"))


def test_a_cancelled_clone_is_removed(xfs: Path):
    root = xfs / "server"
    root.mkdir()
    for i in range(20):
        (root / f"f{i}").write_bytes(b"x")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        clone_tree(root, xfs, "b4", IgnoreRules(), cancel)
    assert not list(xfs.glob(f"{CLONE_PREFIX}*"))


def test_the_sweep_removes_only_marked_clones(xfs: Path):
    root = xfs / "server"
    (root / "ro").mkdir(parents=True)
    (root / "ro" / "f").write_bytes(b"x")
    os.chmod(root / "ro", 0o500)
    clone_tree(root, xfs, "b5", IgnoreRules())  # left as a killed run leaves it
    (xfs / f"{CLONE_PREFIX}empty").mkdir()  # killed between the mkdir and the marker
    foreign = xfs / f"{CLONE_PREFIX}foreign"
    foreign.mkdir()
    (foreign / "keep").write_text("not ours")
    forged = xfs / f"{CLONE_PREFIX}forged"
    forged.mkdir()
    (forged / ".wingsbak-clone").write_text("wingsbak clone\nother\n")  # names another label
    removed = remove_clones(xfs)
    assert sorted(removed) == [f"{CLONE_PREFIX}b5", f"{CLONE_PREFIX}empty"]
    assert (foreign / "keep").exists() and forged.exists()
    assert (root / "ro" / "f").exists()
