"""A deep tree: the walk keeps a bounded number of directories open, whatever the depth, and
still sees every entry once, never following a symlink swapped in on its way back up."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_engine_cli import wingsbak
from test_out_of_descriptors import with_open_files_limit

from wingsbak.archive.walk import Kind, walk

OPEN_FILES = 128  # what the child process is given: far fewer than two per level


def make_chain(top: Path, depth: int) -> str:
    """``top/d/d/.../d/deepest.txt`` ``depth`` levels down, built by descriptor (the path is
    longer than PATH_MAX); returns the file's relative path."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("deepest.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"the deepest file")
    os.close(fd)
    return "d/" * depth + "deepest.txt"


def remove_chain(top: Path, depth: int) -> None:
    """Remove what ``make_chain`` made, without recursion (``shutil.rmtree`` recurses)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.unlink("deepest.txt", dir_fd=fd)
    for _ in range(depth):
        parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = parent
        os.rmdir("d", dir_fd=fd)
    os.close(fd)


@pytest.fixture(params=[1_000, pytest.param(12_000, marks=pytest.mark.slow)])
def deep_tree(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    depth: int = request.param
    src = tmp_path / "src"
    deepest = make_chain(src, depth)
    (src / "top.txt").write_text("top")
    yield src, deepest, depth
    remove_chain(src, depth)


def tar_listing(archive: Path) -> tuple[int, str]:
    """GNU tar's member count and its last member, streamed (12,000 levels: 144 MB of names)."""
    tar = subprocess.Popen(["tar", "-tzf", str(archive)], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    count, last = 0, b""
    for line in tar.stdout:
        count += 1
        last = line
    assert tar.wait() == 0
    return count, last.rstrip(b"\n").decode()


def test_a_deep_tree_is_archived_with_128_descriptors(
    deep_tree: tuple[Path, str, int], tmp_path: Path
) -> None:
    src, deepest, depth = deep_tree
    out = tmp_path / "out.tar.gz"
    proc = wingsbak(
        "archive", str(src), "-o", str(out), preexec_fn=with_open_files_limit(OPEN_FILES)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, last = tar_listing(out)
    assert count == depth + 2  # the directories, the deepest file and top.txt
    assert last in (deepest, "top.txt")
    extracted = subprocess.run(
        ["tar", "-xzOf", str(out), deepest], check=True, capture_output=True
    ).stdout
    assert extracted == b"the deepest file"


def tree(root: Path) -> set[str]:
    """Every entry under ``root``, as the walk names them (os.walk is the oracle)."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            seen.add(name if rel == "." else f"{rel}/{name}")
    return seen


def make_wide_and_deep(root: Path) -> None:
    """Directories of several widths at several depths, files beside them at every level."""
    for a in range(4):
        d = root
        for depth in range(9):
            d = d / f"l{depth}-{a}"
            for f in range(a + 1):
                (d / f"side-{f}").mkdir(parents=True, exist_ok=True)
                (d / f"side-{f}" / "x.txt").write_text("x")
            (d / f"file-{depth}.txt").parent.mkdir(parents=True, exist_ok=True)
            (d / f"file-{depth}.txt").write_text(str(depth))


@pytest.mark.parametrize("max_open", [2, 3, 5, 32])
def test_few_open_levels_still_walk_every_entry_once_in_order(
    tmp_path: Path, max_open: int
) -> None:
    make_wide_and_deep(tmp_path)
    entries = list(walk(tmp_path, max_open=max_open))
    names = [e.relpath for e in entries]
    assert len(names) == len(set(names))
    assert set(names) == tree(tmp_path)
    position = {n: i for i, n in enumerate(names)}
    for n in names:  # each directory comes before its contents
        if "/" in n:
            assert position[n.rsplit("/", 1)[0]] < position[n], n


def test_entries_open_through_their_dir_fd_after_reopening(tmp_path: Path) -> None:
    make_wide_and_deep(tmp_path)
    for entry in walk(tmp_path, max_open=2):
        if entry.kind is Kind.FILE:
            fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=entry.dir_fd)
            try:
                assert os.fstat(fd).st_ino == entry.st.st_ino, entry.relpath
            finally:
                os.close(fd)


def test_a_closed_level_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """The walk climbs back into a directory it had closed: a symlink put at its name since
    then (to outside the root) is never entered, and nothing of the outside is yielded."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    root = tmp_path / "root"
    deep = root / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (root / "a" / "b" / "later.txt").write_text("later")
    (deep / "f.txt").write_text("f")
    seen: list[str] = []
    for entry in walk(root, max_open=2):
        seen.append(entry.relpath)
        if entry.relpath == "a/b/c/d/e/f.txt":
            # a/b was closed on the way down (only two levels stay open): move it away and
            # put a symlink to the outside at its name.
            os.rename(root / "a" / "b", tmp_path / "b-moved")
            os.symlink(outside, root / "a" / "b")
    assert not any("secret" in s for s in seen), seen


def test_a_closed_level_removed_meanwhile_ends_quietly(tmp_path: Path) -> None:
    """A directory removed while closed has nothing left to archive: the walk goes on."""
    root = tmp_path / "root"
    deep = root / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (root / "a" / "b" / "later.txt").write_text("later")
    (root / "a" / "z.txt").write_text("z")
    (deep / "f.txt").write_text("f")
    skipped: list[str] = []
    seen: list[str] = []
    removed_at = -1
    for entry in walk(root, on_skip=lambda p, r: skipped.append(p), max_open=2):
        seen.append(entry.relpath)
        if entry.relpath == "a/b/c/d/e/f.txt":
            shutil.rmtree(root / "a" / "b")
            removed_at = len(seen)
    assert removed_at > 0 and skipped == []
    assert not [p for p in seen[removed_at:] if p.startswith("a/b/")]
    assert "a/z.txt" in seen  # before b, or after it once a, closed too, is reopened by name
