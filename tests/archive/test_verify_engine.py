"""The verification engine on its own: archives GNU tar, gzip and wingsbak write are sound,
damage of every kind is found, and the real tools (gzip -t, tar -t, sha1sum -c) agree."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
from engine_helpers import archive_file

import wingsbak.archive.codecs as codecs
from wingsbak.archive.ratelimit import Cancelled
from wingsbak.archive.verify import (
    ArchiveCorrupt,
    ArchiveGone,
    parse_checksum_line,
    verify_file,
    verify_stream,
)

BLOCK = 512


def game_tree(root: Path) -> Path:
    (root / "world" / "region").mkdir(parents=True)
    (root / "world" / "region" / "r.0.0.mca").write_bytes(os.urandom(700_000))
    (root / "logs").mkdir()
    (root / "logs" / "latest.log").write_text("[12:00:00] Saved the game\n" * 5000)
    (root / ("n" * 150 + ".dat")).write_bytes(b"a long name")
    (root / "empty").mkdir()
    os.symlink("world/region/r.0.0.mca", root / "link")
    with open(root / "sparse.bin", "wb") as f:  # holes, as a game's preallocated file
        f.truncate(8 * 1024 * 1024)
        for i in range(7):  # more regions than an old GNU sparse header holds (4)
            f.seek(i * 1024 * 1024 + 4096)
            f.write(os.urandom(5000))
    return root


def tar_count(archive: Path) -> int:
    out = subprocess.run(["tar", "-tzf", str(archive)], check=True, capture_output=True).stdout
    return len(out.splitlines())


def gzip_t_fails(archive: Path) -> bool:
    return subprocess.run(["gzip", "-t", str(archive)], capture_output=True).returncode != 0


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return game_tree(tmp_path / "root")


@pytest.fixture
def wingsbak_archive(tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "backup.tar.gz"
    archive_file(tree, out)
    return out


def test_a_wingsbak_archive_is_sound_and_matches_its_sidecar(wingsbak_archive: Path) -> None:
    result = verify_file(wingsbak_archive)
    assert result.checksum_checked
    assert result.checksum_type == "sha1"
    assert result.checksum == hashlib.sha1(wingsbak_archive.read_bytes()).hexdigest()
    assert result.size == wingsbak_archive.stat().st_size
    assert result.entries == tar_count(wingsbak_archive)
    assert result.unpacked == len(gzip.decompress(wingsbak_archive.read_bytes()))


@pytest.mark.parametrize(
    "options",
    [
        ["--format=gnu"],
        ["--format=posix"],
        ["--format=posix", "--sparse"],
        ["--format=gnu", "--sparse"],  # old GNU sparse entries ('S') with their map blocks
        ["--format=oldgnu", "--sparse"],
        ["--format=ustar"],
    ],
)
def test_archives_gnu_tar_writes_are_sound(tree: Path, tmp_path: Path, options: list[str]) -> None:
    out = tmp_path / "gnu.tar.gz"
    if options == ["--format=ustar"]:  # ustar cannot hold the 150-byte name
        (tree / ("n" * 150 + ".dat")).unlink()
    subprocess.run(["tar", *options, "-czf", str(out), "-C", str(tree), "."], check=True)
    result = verify_file(out)
    assert not result.checksum_checked  # no sidecar: as Wings' own archives
    assert result.entries == tar_count(out)


def test_many_independent_gzip_members_are_one_archive(tree: Path, tmp_path: Path) -> None:
    """A later format writes an archive as many gzip members (to seek into it): a member
    boundary anywhere, even inside a header, is nothing but a boundary."""
    plain = subprocess.run(
        ["tar", "-cf", "-", "-C", str(tree), "."], check=True, capture_output=True
    ).stdout
    cuts = [0, 700, 5 * BLOCK + 3, len(plain) // 2, len(plain) - 10, len(plain)]
    out = tmp_path / "members.tar.gz"
    with open(out, "wb") as f:
        for start, end in itertools.pairwise(cuts):
            f.write(gzip.compress(plain[start:end], mtime=0))
    assert subprocess.run(["gzip", "-t", str(out)]).returncode == 0
    result = verify_file(out)
    assert result.unpacked == len(plain)
    assert result.entries == tar_count(out)


@pytest.mark.parametrize("where", [0.001, 0.25, 0.5, 0.9, -6])
def test_a_flipped_byte_is_found_where_gzip_finds_it(wingsbak_archive: Path, where: float) -> None:
    data = bytearray(wingsbak_archive.read_bytes())
    at = int(len(data) * where) if where > 0 else len(data) + int(where)
    data[at] ^= 0x10
    wingsbak_archive.write_bytes(bytes(data))
    assert gzip_t_fails(wingsbak_archive)
    with pytest.raises(ArchiveCorrupt):
        verify_file(wingsbak_archive, use_sidecar=False)
    with pytest.raises(ArchiveCorrupt, match=r"does not match its recorded sha1|corrupt"):
        verify_file(wingsbak_archive)


@pytest.mark.parametrize("keep", [20, 0.3, 0.99, -1])
def test_a_truncated_archive_is_found(wingsbak_archive: Path, keep: float) -> None:
    size = wingsbak_archive.stat().st_size
    os.truncate(wingsbak_archive, int(size * keep) if 0 < keep < 1 else int(keep) % size)
    assert gzip_t_fails(wingsbak_archive)
    with pytest.raises(ArchiveCorrupt):
        verify_file(wingsbak_archive, use_sidecar=False)


def _regzip(tar_bytes: bytes, path: Path) -> Path:
    path.write_bytes(gzip.compress(tar_bytes, mtime=0))
    return path


def _tar_of(tree: Path) -> bytes:
    return subprocess.run(
        ["tar", "-cf", "-", "-C", str(tree), "."], check=True, capture_output=True
    ).stdout


def test_a_damaged_tar_header_in_sound_gzip_is_found(tree: Path, tmp_path: Path) -> None:
    plain = bytearray(_tar_of(tree))
    headers = [i for i in range(0, len(plain), BLOCK) if plain[i + 257 : i + 262] == b"ustar"]
    plain[headers[len(headers) // 2] + 3] ^= 0x01
    out = _regzip(bytes(plain), tmp_path / "bad-header.tar.gz")
    assert not gzip_t_fails(out)  # gzip cannot see it
    assert subprocess.run(["tar", "-tzf", str(out)], capture_output=True).returncode != 0
    with pytest.raises(ArchiveCorrupt, match="bad tar header at byte"):
        verify_file(out)


def test_an_archive_without_its_end_marker_is_found(tree: Path, tmp_path: Path) -> None:
    plain = _tar_of(tree)
    end = len(plain.rstrip(b"\0"))
    end += -end % BLOCK
    out = _regzip(plain[:end], tmp_path / "no-end.tar.gz")
    with pytest.raises(ArchiveCorrupt, match="without the end-of-archive marker"):
        verify_file(out)


def test_a_lone_zero_block_inside_is_found(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name in ("a", "b"):
            info = tarfile.TarInfo(name)
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
    plain = buf.getvalue()
    # Between the two entries: one zero block, then the second entry.
    damaged = plain[: 2 * BLOCK] + bytes(BLOCK) + plain[2 * BLOCK :]
    out = _regzip(damaged, tmp_path / "lone.tar.gz")
    with pytest.raises(ArchiveCorrupt, match="lone zero block"):
        verify_file(out)


def test_a_wrong_or_damaged_sidecar_is_found(wingsbak_archive: Path) -> None:
    sidecar = wingsbak_archive.with_name(wingsbak_archive.name + ".sha1")
    good = sidecar.read_text()
    sidecar.write_text("0" * 40 + good[40:])
    oracle = subprocess.run(["sha1sum", "-c", sidecar.name], cwd=sidecar.parent)
    assert oracle.returncode != 0
    with pytest.raises(ArchiveCorrupt, match="does not match its recorded sha1 checksum"):
        verify_file(wingsbak_archive)
    sidecar.write_text("not a checksum\n")
    with pytest.raises(ArchiveCorrupt, match="sha1 checksum record is damaged"):
        verify_file(wingsbak_archive)
    sidecar.write_text("")
    with pytest.raises(ArchiveCorrupt, match="damaged"):
        verify_file(wingsbak_archive)
    # The archive itself is sound: read without its sidecar it passes.
    assert verify_file(wingsbak_archive, use_sidecar=False).entries > 0


def test_a_sha256_sidecar_is_used(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    archive_file(tree, out, checksum="sha256")
    result = verify_file(out)
    assert (result.checksum_type, result.checksum_checked) == ("sha256", True)
    assert result.checksum == hashlib.sha256(out.read_bytes()).hexdigest()


def test_the_zlib_fallback_finds_the_same(
    monkeypatch: pytest.MonkeyPatch, wingsbak_archive: Path, tmp_path: Path, tree: Path
) -> None:
    monkeypatch.setattr(codecs, "HAVE_ISAL", False)
    assert verify_file(wingsbak_archive).checksum_checked
    plain = _tar_of(tree)
    members = tmp_path / "m.tar.gz"
    members.write_bytes(b"".join(gzip.compress(p, mtime=0) for p in (plain[:777], plain[777:])))
    assert verify_file(members).entries == tar_count(members)
    flip = bytearray(wingsbak_archive.read_bytes())
    flip[len(flip) // 2] ^= 0x10
    wingsbak_archive.write_bytes(bytes(flip))
    with pytest.raises(ArchiveCorrupt):
        verify_file(wingsbak_archive, use_sidecar=False)


def test_not_gzip_at_all_is_corrupt(tmp_path: Path) -> None:
    out = tmp_path / "x.tar.gz"
    out.write_bytes(b"<html>not an archive</html>" * 100)
    with pytest.raises(ArchiveCorrupt):
        verify_file(out)


def test_a_missing_archive_is_gone_not_corrupt(tmp_path: Path) -> None:
    with pytest.raises(ArchiveGone):
        verify_file(tmp_path / "nothing.tar.gz")


def test_cancel_and_hold(wingsbak_archive: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        verify_file(wingsbak_archive, cancel=cancel)
    holds: list[int] = []
    verify_file(wingsbak_archive, hold=lambda: holds.append(1))
    assert holds  # asked before every read, so a running backup can pause it


def test_a_source_error_is_not_corruption() -> None:
    class Flaky(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = False

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            if self.sent:
                raise ConnectionResetError(104, "Connection reset by peer")
            self.sent = True
            data = gzip.compress(b"x" * 100_000)[:50]
            memoryview(b)[: len(data)] = data
            return len(data)

    from wingsbak.archive.verify import SourceError

    with pytest.raises(SourceError, match="Connection reset") as err:
        verify_stream(Flaky())
    assert not isinstance(err.value, ArchiveCorrupt)


def test_checksum_lines() -> None:
    digest = "a" * 40
    assert parse_checksum_line(f"{digest.upper()}  backup.tar.gz\n", "sha1") == digest
    with pytest.raises(ArchiveCorrupt):
        parse_checksum_line("a" * 39, "sha1")
    with pytest.raises(ArchiveCorrupt):
        parse_checksum_line("g" * 40, "sha1")
