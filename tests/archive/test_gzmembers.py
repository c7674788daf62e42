"""New archives are a series of independent gzip members (archive/gzmembers.py): ordinary
gzip to gzip, tar and Python, each member decompressible on its own from the offsets the
writer notes; the reader finds the members of any gzip stream."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import zlib
from pathlib import Path

import pytest
from engine_helpers import archive_file, gnu_extract, gzip_test, snapshot

from wingsbak.archive import codecs as wgzip
from wingsbak.archive.gzmembers import MEMBER_SIZE, GzipFormatError, MemberReader


def _tree(root: Path) -> None:
    (root / "world").mkdir(parents=True)
    (root / "world" / "region.mca").write_bytes(os.urandom(5 * 1024 * 1024))
    (root / "logs").mkdir()
    (root / "logs" / "latest.log").write_bytes(b"[12:00:00] [Server thread/INFO]: tick\n" * 200_000)
    (root / "empty").write_bytes(b"")


@pytest.mark.parametrize("isal", [True, False], ids=["isal", "zlib"])
def test_members_are_independent_and_the_archive_is_ordinary_gzip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isal: bool
) -> None:
    if isal and not wgzip.HAVE_ISAL:
        pytest.skip("isal is not installed")
    monkeypatch.setattr(wgzip, "HAVE_ISAL", isal)
    root = tmp_path / "root"
    _tree(root)
    out = tmp_path / "b.tar.gz"
    result = archive_file(root, out)
    gzip_test(out)
    dest = tmp_path / "dest"
    gnu_extract(out, dest)
    assert snapshot(dest) == snapshot(root)
    stream = subprocess.run(["gzip", "-dc", str(out)], capture_output=True, check=True).stdout
    assert gzip.decompress(out.read_bytes()) == stream
    packed = out.read_bytes()
    assert result.index is not None
    members = result.index.members
    assert len(members) >= len(stream) // MEMBER_SIZE + 1
    for (compressed, uncompressed), following in zip(members, [*members[1:], None], strict=True):
        # Each member alone, from its own offset, gives the stream's bytes at its place.
        dec = zlib.decompressobj(31)
        data = dec.decompress(packed[compressed:])
        assert dec.eof
        end = following[1] if following else len(stream)
        assert data == stream[uncompressed:end]
        if following:
            assert len(packed) - len(dec.unused_data) == following[0]
    with open(out, "rb") as f:
        assert wgzip.GZIP.unpacked_size(f) == len(stream)  # type: ignore[arg-type]


def test_member_reader_finds_the_members_of_concatenated_gzip_files(tmp_path: Path) -> None:
    parts = [b"first " * 50_000, os.urandom(300_000), b""]
    files = []
    for i, part in enumerate(parts):
        path = tmp_path / f"{i}"
        path.write_bytes(part)
        subprocess.run(["gzip", "-n", str(path)], check=True)
        files.append((tmp_path / f"{i}.gz").read_bytes())
    joined = b"".join(files)
    reader = MemberReader(io.BytesIO(joined))
    out = b"".join(iter(lambda: reader.read(65536), b""))
    assert out == b"".join(parts)
    offsets = [0, len(files[0]), len(files[0]) + len(files[1])]
    assert reader.members == [
        (offsets[0], 0),
        (offsets[1], len(parts[0])),
        (offsets[2], len(parts[0]) + len(parts[1])),
    ]


def test_member_reader_refuses_truncated_and_trailing_garbage() -> None:
    packed = gzip.compress(os.urandom(100_000))
    with pytest.raises(GzipFormatError, match="truncated"):
        reader = MemberReader(io.BytesIO(packed[:-20]))
        while reader.read(65536):
            pass
    reader = MemberReader(io.BytesIO(packed + bytes(100)))  # zero padding, as gzip allows
    while reader.read(65536):
        pass
    with pytest.raises(GzipFormatError, match="trailing garbage"):
        reader = MemberReader(io.BytesIO(packed + b"\0junk"))
        while reader.read(65536):
            pass
