"""Sparse files: their holes are never read and are archived as GNU tar's pax sparse 1.0
(GNU tar lists and extracts them with the right size and content), and a restore leaves them
holes. Files without holes stay plain entries."""

from __future__ import annotations

import gzip
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from engine_helpers import archive_file

from wingsbak.archive.extract import restore_archive_file
from wingsbak.archive.holes import data_regions

MIB = 1024 * 1024
GIB = 1024 * MIB
BIG = 256 * MIB


def sparse_file(path: Path, size: int, writes: dict[int, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def cmp(a: Path, b: Path) -> None:
    subprocess.run(["cmp", str(a), str(b)], check=True)


@pytest.fixture
def sparse_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    # A hole at each end and one in the middle; a hole then data at the end; a long name and
    # a non-ASCII one (they do not fit the ustar name GNU tar gives a sparse entry).
    # (cmp reads the holes of both copies: the sizes are kept modest; bench/ has 10 GiB.)
    sparse_file(root / "world.region", BIG, {MIB: b"HEAD" * 1000, BIG // 2: b"MIDDLE"})
    sparse_file(root / "logs" / "ends-in-data.bin", 16 * MIB + 3, {16 * MIB: b"end"})
    sparse_file(root / ("deep-" * 25) / "long.img", 32 * MIB, {0: b"start"})
    sparse_file(root / "wörld" / "sparse-ü.db", 32 * MIB, {20 * MIB: b"x" * 10_000})
    (root / "plain.txt").write_text("plain file\n")
    return root


def test_holes_are_archived_as_holes_and_gnu_tar_restores_them(
    sparse_tree: Path, tmp_path: Path
) -> None:
    files = [p for p in sparse_tree.rglob("*") if p.is_file()]
    out = tmp_path / "out.tar.gz"
    result = archive_file(sparse_tree, out)

    # Only the data regions were read (whole file system blocks of them), never a hole.
    assert result.bytes_read <= sum(allocated(p) for p in files)
    assert result.bytes_read < MIB
    assert out.stat().st_size < 64 * 1024

    # GNU tar: the real sizes listed, then extracted with --sparse: same bytes, still holes.
    listing = subprocess.run(
        ["tar", "-tvzf", str(out)], check=True, capture_output=True, text=True
    ).stdout
    for p in files:
        rel = str(p.relative_to(sparse_tree))
        line = next(line for line in listing.splitlines() if line.endswith(" " + rel))
        assert f" {p.stat().st_size} " in line, line
    assert "GNUSparseFile" not in listing
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(["tar", "-xSzf", str(out), "-C", str(dest)], check=True)
    for p in files:
        restored = dest / p.relative_to(sparse_tree)
        assert restored.stat().st_size == p.stat().st_size
        cmp(p, restored)
        assert allocated(restored) <= max(allocated(p), 64 * 1024), restored


def test_the_restore_keeps_the_holes(sparse_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar.gz"
    archive_file(sparse_tree, out)
    dest = tmp_path / "restored"
    result = restore_archive_file(out, dest)
    assert result.skipped == 0
    for p in (p for p in sparse_tree.rglob("*") if p.is_file()):
        restored = dest / p.relative_to(sparse_tree)
        assert restored.stat().st_size == p.stat().st_size
        cmp(p, restored)
        assert allocated(restored) <= max(allocated(p), 64 * 1024), restored
    du = subprocess.run(["du", "-sk", str(dest)], check=True, capture_output=True, text=True)
    assert int(du.stdout.split()[0]) < 1024  # KiB on disk for 336 MiB of files


def test_the_entry_is_pax_sparse_1_0(sparse_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar.gz"
    archive_file(sparse_tree, out)
    raw = gzip.decompress(out.read_bytes())
    assert b"GNU.sparse.major=1\n" in raw and b"GNU.sparse.minor=0\n" in raw
    assert b"GNU.sparse.name=world.region\n" in raw
    assert b"GNU.sparse.realsize=%d\n" % BIG in raw
    with tarfile.open(out) as t:  # Python's reader agrees on the map and the size
        m = t.getmember("world.region")
        assert m.size == BIG
        assert m.sparse is not None and m.sparse[-1] == (BIG, 0)
        assert t.getmember("plain.txt").sparse is None


def test_files_without_holes_stay_plain_entries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "full.bin").write_bytes(os.urandom(3 * 4096 + 5))
    (root / "empty").write_bytes(b"")
    out = tmp_path / "out.tar.gz"
    result = archive_file(root, out)
    assert result.bytes_read == 3 * 4096 + 5
    assert b"GNU.sparse" not in gzip.decompress(out.read_bytes())


def test_an_all_hole_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sparse_file(root / "nothing.img", 10 * GIB, {})
    out = tmp_path / "out.tar.gz"
    result = archive_file(root, out)
    assert result.bytes_read == 0
    dest = tmp_path / "restored"
    restore_archive_file(out, dest)
    assert (dest / "nothing.img").stat().st_size == 10 * GIB
    assert allocated(dest / "nothing.img") == 0


def test_a_file_of_many_holes_keeps_a_bounded_map(tmp_path: Path) -> None:
    path = tmp_path / "many"
    sparse_file(path, 400 * 65536, {i * 65536: b"d" for i in range(400)})
    fd = os.open(path, os.O_RDONLY)
    try:
        exact = data_regions(fd, path.stat().st_size)
        bounded = data_regions(fd, path.stat().st_size, max_regions=50)
    finally:
        os.close(fd)
    assert exact is not None and bounded is not None
    assert len(exact) == 401 and exact[-1] == (400 * 65536, 0)
    assert len(bounded) <= 51
    # Every byte of data is still inside a region of the bounded map.
    for start, length in exact[:-1]:
        assert any(s <= start and start + length <= s + n for s, n in bounded), start
