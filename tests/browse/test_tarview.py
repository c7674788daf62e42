"""browse/tarview.py: a listing reads only the index; reading one file fetches and
decompresses only the gzip members it spans, from a local file or an S3 object (moto's
server, ranged GETs through boto3); an archive without an index is indexed on first open."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wingsbak.archive.archiver import archive_to_file
from wingsbak.archive.gzmembers import MEMBER_SIZE
from wingsbak.archive.index import index_path
from wingsbak.browse.model import NotADirectory, NotFound
from wingsbak.browse.tarview import FileSource, S3ObjectSource, open_tar_view


class Counting:
    """A RangeSource that counts what is read through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return int(self.inner.size)

    @property
    def mtime_ns(self) -> int:
        return int(self.inner.mtime_ns)

    def read_at(self, offset: int, length: int) -> bytes:
        data = bytes(self.inner.read_at(offset, length))
        self.reads.append((offset, len(data)))
        return data

    @property
    def bytes_read(self) -> int:
        return sum(n for _, n in self.reads)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("tarview")
    root = base / "root"
    (root / "world" / "region").mkdir(parents=True)
    for i in range(6):  # ~24 MiB of incompressible data ahead of the last file
        (root / "world" / "region" / f"r.{i}.mca").write_bytes(os.urandom(4 * 1024 * 1024))
    (root / "zz").mkdir()
    (root / "zz" / "last.dat").write_bytes(os.urandom(1024 * 1024))
    (root / "config.yml").write_text("a: 1\n")
    (root / "link").symlink_to("config.yml")
    with open(root / "sparse.img", "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(3 * 1024 * 1024)
        f.write(b"middle")
    out = base / "b.tar.gz"
    archive_to_file(root, out, index=True)
    return root, out


def _read(view: Any, path: str) -> bytes:
    with view.open(path) as f:
        return bytes(f.read())


def test_listing_reads_only_the_index(archive: tuple[Path, Path]) -> None:
    root, out = archive
    source = Counting(FileSource(out))
    view = open_tar_view(source, index_path(out))
    opened = len(source.reads)  # the index's check of the archive: its head and tail
    assert source.bytes_read <= 2 * 64 * 1024
    names = [e.name for e in view.listdir("")]
    assert names == sorted(os.listdir(root))
    assert [e.name for e in view.listdir("world/region")] == [f"r.{i}.mca" for i in range(6)]
    st = view.stat("zz/last.dat")
    assert (st.kind, st.size) == ("file", 1024 * 1024)
    assert view.stat("link").linkname == "config.yml"
    assert len(source.reads) == opened
    with pytest.raises(NotFound):
        view.listdir("nope")
    with pytest.raises(NotADirectory):
        view.listdir("config.yml")
    with pytest.raises(IsADirectoryError):
        view.open("link").__enter__()  # a symlink is never followed
    with pytest.raises(IsADirectoryError):
        view.open("zz").__enter__()


def test_reading_the_last_file_decompresses_only_its_members(archive: tuple[Path, Path]) -> None:
    root, out = archive
    source = Counting(FileSource(out))
    view = open_tar_view(source, index_path(out))
    before = source.bytes_read
    assert _read(view, "zz/last.dat") == (root / "zz" / "last.dat").read_bytes()
    # 1 MiB spans at most two members: at most two members' worth of compressed bytes.
    assert source.bytes_read - before <= 2 * (MEMBER_SIZE + MEMBER_SIZE // 10)
    assert source.bytes_read - before < out.stat().st_size // 3
    assert _read(view, "sparse.img") == (root / "sparse.img").read_bytes()
    assert _read(view, "config.yml") == b"a: 1\n"


def test_an_archive_without_index_is_indexed_on_first_open(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("from GNU tar\n")
    (src / "big").write_bytes(os.urandom(2 * 1024 * 1024))
    out = tmp_path / "legacy.tar.gz"
    subprocess.run(["tar", "-czf", str(out), "-C", str(src), "."], check=True)
    idx = tmp_path / "legacy.tar.gz.index"
    assert not idx.exists()
    view = open_tar_view(FileSource(out), idx)
    assert idx.exists()
    assert [e.name for e in view.listdir("")] == ["big", "d"]
    assert _read(view, "d/f.txt") == b"from GNU tar\n"
    assert hashlib.sha1(_read(view, "big")).digest() == hashlib.sha1(
        (src / "big").read_bytes()
    ).digest()
    mtime = idx.stat().st_mtime_ns
    open_tar_view(FileSource(out), idx)  # kept: not built again
    assert idx.stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_s3_object_read_by_ranged_gets(
    archive: tuple[Path, Path],
    s3_admin: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    root, out = archive
    key = "node/server/b.tar.gz"
    s3_admin.upload_file(str(out), bucket, key)
    source = Counting(S3ObjectSource(s3_admin, bucket, key))
    # No index beside it yet: the first open builds one through ranged reads.
    view = open_tar_view(source, tmp_path / "b.index")
    assert [e.name for e in view.listdir("zz")] == ["last.dat"]
    source.reads.clear()
    assert _read(view, "zz/last.dat") == (root / "zz" / "last.dat").read_bytes()
    assert 0 < source.bytes_read <= 2 * (MEMBER_SIZE + MEMBER_SIZE // 10)
    assert len(source.reads) <= 3  # one GET per member


def test_killed_while_writing_the_index_leaves_none_under_its_name(
    archive: tuple[Path, Path], tmp_path: Path
) -> None:
    root, out = archive
    idx = tmp_path / "b.tar.gz.index"
    code = (
        "import sys\n"
        "from wingsbak.browse.tarview import FileSource, open_tar_view\n"
        "open_tar_view(FileSource(sys.argv[1]), sys.argv[2])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), str(idx)],
        env={**os.environ, "WINGSBAK_FAILPOINT": "index-written:kill"},
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not idx.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]  # it was killed late
    view = open_tar_view(FileSource(out), idx)  # built again, whole
    assert _read(view, "zz/last.dat") == (root / "zz" / "last.dat").read_bytes()
