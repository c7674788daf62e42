"""The codec table: each codec's writer and reader round-trip, its size probe tells the
unpacked size, what it writes starts with its magic, and a restore reads an archive in any
of them as GNU tar extracts it."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from wingsbak.archive.codecs import (
    CODECS,
    GZIP,
    TAR,
    Codec,
    archive_name,
    download_filename,
    earlier_archive_name,
)
from wingsbak.archive.extract import restore_archive_file


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_a_codec_reads_back_what_it_writes(codec: Codec, tmp_path: Path) -> None:
    data = os.urandom(300_000) + b"ab" * 2_000_000
    path = tmp_path / f"x{codec.suffix}"
    with open(path, "wb") as raw:
        writer = codec.open_writer(raw)  # type: ignore[arg-type]
        writer.write(data)
        writer.close()
        assert not raw.closed  # closing the writer finishes the stream, not the file
    packed = path.read_bytes()
    assert packed.startswith(codec.magic)
    with open(path, "rb") as f:
        assert codec.unpacked_size(f) == len(data)  # type: ignore[arg-type]
    reader = codec.open_reader(io.BytesIO(packed))
    assert reader.read() == data


def test_the_names_of_an_archive_end_in_the_gzip_suffix() -> None:
    uuid = "0b5d2f0e-7a3c-4f1e-9a51-3c8d2b1f6e70"
    assert archive_name(uuid) == f"{uuid}.tar.gz"
    assert earlier_archive_name(uuid) == download_filename(uuid) == f"backup-{uuid}.tar.gz"
    assert (GZIP.suffix, TAR.suffix) == (".tar.gz", ".tar")


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_a_restore_reads_each_codec_as_gnu_tar_does(codec: Codec, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "world").mkdir(parents=True)
    (src / "world" / "level.dat").write_bytes(os.urandom(100_000))
    (src / "server.properties").write_text("motd=hi\n")
    (src / "link").symlink_to("world/level.dat")
    archive = tmp_path / f"a{codec.suffix}"
    flag = {"gzip": "-z", "tar": ""}[codec.name]
    subprocess.run(
        ["tar", *([flag] if flag else []), "-cf", str(archive), "-C", str(src), "."], check=True
    )
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(theirs)], check=True)
    result = restore_archive_file(archive, ours, codec=codec)
    assert result.files == 2 and result.symlinks == 1
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(theirs), str(ours)])
    assert diff.returncode == 0
