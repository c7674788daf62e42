"""The tar reader on its own: archives GNU tar writes, read entry by entry, agree with Python's
``tarfile`` (names, types, sizes, times, owners, links, where headers and data start) and
give back the bytes GNU tar put in; a sparse file's regions rebuild it."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from wingsbak.archive.tarread import BLOCK, DIRECTORY, TarError, iter_entries

MIB = 1024 * 1024


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    deep = root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "long-name.txt").write_bytes(b"long\n" * 300)
    (root / "wörld").mkdir()
    (root / "wörld" / "level.dat").write_bytes(os.urandom(70_000))
    (root / "empty").write_bytes(b"")
    (root / "server.properties").write_text("motd=hi\n")
    os.link(root / "server.properties", root / "hard")
    (root / "link").symlink_to("wörld/level.dat")
    os.utime(root / "empty", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return root


def gnu_tar(src: Path, out: Path, fmt: str, *extra: str) -> bytes:
    subprocess.run(
        ["tar", f"--format={fmt}", *extra, "-cf", str(out), "-C", str(src), "."], check=True
    )
    return out.read_bytes()


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_entries_agree_with_tarfile(src: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "ustar":  # ustar holds no long names: keep to what fits
        subprocess.run(["rm", "-r", str(src / ("d" * 60))], check=True)
    data = gnu_tar(src, tmp_path / "a.tar", fmt)
    with tarfile.open(fileobj=io.BytesIO(data)) as oracle:
        members = oracle.getmembers()
        contents = {
            m.name: oracle.extractfile(m).read()  # type: ignore[union-attr]
            for m in members
            if m.isreg()
        }
    reader = iter_entries(io.BytesIO(data))
    seen = []
    for entry in reader:
        name = entry.name.decode().rstrip("/")
        m = members[len(seen)]
        assert name == m.name
        assert entry.type == ord(m.type)
        assert entry.size == (m.size if m.isreg() else 0)
        assert entry.mode == m.mode
        assert (entry.uid, entry.gid) == (m.uid, m.gid)
        assert entry.mtime // 1_000_000_000 == int(m.mtime)
        assert entry.linkname.decode() == m.linkname
        assert (entry.header_offset, entry.data_offset) == (m.offset, m.offset_data)
        if m.isreg():
            assert data[entry.data_offset : entry.data_offset + entry.size] == contents[name]
            # Read part of some, all of others: the reader keeps in step either way.
            if len(seen) % 2:
                assert entry.read(5) == contents[name][:5]
            else:
                assert entry.read() == contents[name]
                assert entry.remaining == 0
        seen.append(name)
    assert len(seen) == len(members)
    assert reader.tell == len(data)  # read to the end: the stream's trailer is checked


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_a_sparse_file_is_rebuilt_from_its_regions(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    original = bytearray(9 * MIB)
    with open(src / "holes.bin", "wb") as f:
        for i in range(7):  # more regions than an old GNU header holds
            piece = b"R%d" % i * 50
            f.seek(i * MIB + 100)
            f.write(piece)
            original[i * MIB + 100 : i * MIB + 100 + len(piece)] = piece
        f.truncate(9 * MIB)
    data = gnu_tar(src, tmp_path / "a.tar", fmt, "-S")
    rebuilt = []
    for entry in iter_entries(io.BytesIO(data)):
        if entry.sparse is not None:
            assert entry.real_size == 9 * MIB
            content = bytearray(entry.real_size)
            for offset, length in entry.sparse_regions():
                content[offset : offset + length] = entry.read(length)
            assert entry.remaining == 0
            rebuilt.append(content)
    assert rebuilt == [original]


def test_an_old_directory_named_with_a_slash_is_a_directory() -> None:
    info = tarfile.TarInfo("old/")
    info.type = tarfile.REGTYPE
    data = info.tobuf(tarfile.USTAR_FORMAT) + bytes(2 * BLOCK)
    (entry,) = iter_entries(io.BytesIO(data))
    assert entry.type == DIRECTORY


def test_data_is_read_only_while_the_entry_is_current(src: Path, tmp_path: Path) -> None:
    data = gnu_tar(src, tmp_path / "a.tar", "posix")
    reader = iter_entries(io.BytesIO(data))
    first = next(e for e in reader if e.size)
    next(reader)
    with pytest.raises(RuntimeError):
        first.read()


def _two_entries() -> bytes:
    out = b""
    for name in ("f", "g"):
        info = tarfile.TarInfo(name)
        info.size = 2 * BLOCK
        out += info.tobuf(tarfile.USTAR_FORMAT) + bytes(range(256)) * 4
    return out


@pytest.mark.parametrize(
    ("damaged", "words"),
    [
        (_two_entries(), "without the end-of-archive marker"),
        (_two_entries() + bytes(BLOCK), "after a single zero block"),
        (
            _two_entries()[: 3 * BLOCK] + bytes(BLOCK) + _two_entries()[3 * BLOCK :],
            "lone zero block at byte 1536",
        ),
        (b"X" + _two_entries()[1:], "bad tar header at byte 0"),
        (_two_entries()[: BLOCK + 3], "truncated inside 'f'"),
    ],
)
def test_what_no_reader_trusts_is_refused(damaged: bytes, words: str) -> None:
    with pytest.raises(TarError, match=words):
        for entry in iter_entries(io.BytesIO(damaged)):
            entry.skip()
