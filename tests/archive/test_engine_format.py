"""A standard archive: GNU tar, Python's tarfile, gzip -t and sha1sum -c all accept it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from engine_helpers import archive_file, gnu_extract, gnu_tar_names, gzip_test, snapshot

import wingsbak.archive.codecs as wgzip
from wingsbak.archive import IgnoreRules
from wingsbak.archive.archiver import READ_CHUNK


def make(root: Path, rel: bytes, data: bytes = b"") -> None:
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def link(root: Path, rel: bytes, target: bytes) -> None:
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)


def unusual_tree(root: Path) -> None:
    make(root, b"n" * 100, b"exactly 100")
    make(root, b"n" * 101, b"101")
    make(root, b"l" * 150 + b".txt", b"150")
    make(root, b"m" * 255, b"longest single name")
    make(root, b"d" * 200 + b"/" + b"f" * 200, b"path over 255")
    make(root, b"/".join([b"level_directory_"] * 40) + b"/bottom.txt", b"deep")
    make(root, b"caf\xe9.txt", b"latin-1 name")
    make(root, b"\xff\xfe/inner\x80", b"non-UTF-8 directory")
    make(root, "日本語/セーブ.dat".encode(), b"unicode")
    make(root, "🎮 game/e\u0301t\u00e9.txt".encode(), b"emoji and combining")
    make(root, b"" + "ü".encode() * 60, b"120 bytes of 60 characters")
    make(root, b"spaces and\ttab", b"whitespace")
    link(root, b"long_target", b"t" * 150)
    link(root, b"unicode_target", "ü".encode() * 60)
    link(root, b"bytes_target", b"\xe9" * 20)
    link(root, b"k" * 120, b"short")
    os.makedirs(os.path.join(os.fsencode(root), b"empty\xa0dir"))


def test_unusual_names_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    unusual_tree(root)
    out = tmp_path / "out.tar.gz"
    result = archive_file(root, out, IgnoreRules())
    gzip_test(out)
    assert result.skipped == 0

    # GNU tar restores exactly the same tree: names, contents, modes, mtimes, link targets.
    dest = tmp_path / "dest"
    gnu_extract(out, dest)
    source = snapshot(root)
    assert snapshot(dest) == source
    listed = {n.rstrip(b"/") for n in gnu_tar_names(out)}
    assert listed == set(source)
    assert result.files == len(source)

    # Python's tarfile reads the same names (undecodable bytes as surrogate escapes).
    with tarfile.open(out, errors="surrogateescape") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {os.fsdecode(p) for p in source}
        for rel, info in source.items():
            m = members[os.fsdecode(rel)]
            if info[0] == "file":
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                assert hashlib.sha1(data).hexdigest() == info[3]
            elif info[0] == "link":
                assert m.issym() and os.fsencode(m.linkname) == info[1]
            else:
                assert m.isdir()


def test_file_data_across_read_chunks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    sizes = {"empty": 0, "one": 1, "block": 512, "chunk": READ_CHUNK, "big": 3 * READ_CHUNK + 7}
    for name, size in sizes.items():
        (root / name).write_bytes(os.urandom(size))
    out = tmp_path / "out.tar.gz"
    result = archive_file(root, out)
    assert result.bytes_read == sum(sizes.values())
    dest = tmp_path / "dest"
    gnu_extract(out, dest)
    assert snapshot(dest) == snapshot(root)


@pytest.mark.parametrize("checksum", ["sha1", "sha256"])
def test_checksum_sidecar_verifies(tmp_path: Path, checksum: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(os.urandom(100_000))
    out = tmp_path / "backup.tar.gz"
    result = archive_file(root, out, checksum=checksum)
    sidecar = tmp_path / f"backup.tar.gz.{checksum}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["root", out.name, sidecar.name])
    subprocess.run([f"{checksum}sum", "-c", sidecar.name], cwd=tmp_path, check=True)
    assert sidecar.read_text() == f"{result.checksum}  backup.tar.gz\n"
    assert result.checksum_type == checksum
    assert result.size == out.stat().st_size
    # The oracle fails on a corrupted archive, so the check above means something.
    with open(out, "r+b") as f:
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = subprocess.run([f"{checksum}sum", "-c", sidecar.name], cwd=tmp_path)
    assert bad.returncode != 0


def compressible_tree(root: Path) -> None:
    root.mkdir()
    words = b" ".join(b"word%d" % (i % 37) for i in range(200_000))
    (root / "log.txt").write_bytes(words)
    (root / "random.bin").write_bytes(os.urandom(50_000))
    (root / "sub").mkdir()
    (root / "sub" / "config.yml").write_text("key: value\n" * 100)


@pytest.mark.parametrize("isal", [True, False], ids=["isal", "zlib"])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_level_writes_valid_gzip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isal: bool, threads: int
) -> None:
    if isal and not wgzip.HAVE_ISAL:
        pytest.skip("isal is not installed")
    # Selects the zlib code path, the one machines without an isal wheel run.
    monkeypatch.setattr(wgzip, "HAVE_ISAL", isal)
    root = tmp_path / "root"
    compressible_tree(root)
    source = snapshot(root)
    sizes: dict[str, int] = {}
    for level in wgzip.COMPRESSION_LEVELS:
        out = tmp_path / f"{level}.tar.gz"
        result = archive_file(root, out, level=level, threads=threads)
        gzip_test(out)
        dest = tmp_path / f"dest-{level}"
        gnu_extract(out, dest)
        assert snapshot(dest) == source, level
        sizes[level] = result.size
    assert sizes["none"] > sizes["best_speed"] >= sizes["best_compression"]


def test_zlib_fallback_really_uses_zlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(wgzip, "HAVE_ISAL", False)
    with open(tmp_path / "x.gz", "wb") as raw:
        writer = wgzip.open_gzip_writer(raw, wgzip.BEST_COMPRESSION)
        writer.write(b"hello " * 1000)
        writer.close()
    data = (tmp_path / "x.gz").read_bytes()
    assert data[8] == 2  # XFL: zlib's marker for its slowest, best level
    gzip_test(tmp_path / "x.gz")


def test_unknown_level_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError, match="unknown compression level"):
        archive_file(tmp_path / "root", tmp_path / "out.tar.gz", level="fastest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


@pytest.mark.slow
def test_sparse_file_over_8_gib(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    big = root / "world.region"
    size = 8 * 1024**3 + 4096 + 3  # past the 11 octal digits of a ustar size field
    with open(big, "wb") as f:
        f.write(b"HEAD")
        f.seek(size // 2)
        f.write(b"MIDDLE")
        f.seek(size - 4)
        f.write(b"TAIL")
    (root / "small").write_text("small")
    out = tmp_path / "out.tar.gz"
    result = archive_file(root, out, level="best_speed")
    assert result.bytes_read < 1024 * 1024  # the three writes' blocks and "small": no hole
    gzip_test(out)
    subprocess.run(["sha1sum", "-c", out.name + ".sha1"], cwd=tmp_path, check=True)

    # GNU tar: the listed size, and the data streamed out compared with the source file.
    listing = subprocess.run(
        ["tar", "-tvzf", str(out)], check=True, capture_output=True, text=True
    ).stdout
    assert str(size) in listing
    source_digest = subprocess.run(
        ["sha1sum", str(big)], check=True, capture_output=True, text=True
    ).stdout.split()[0]
    tar = subprocess.Popen(["tar", "-xzOf", str(out), "world.region"], stdout=subprocess.PIPE)
    sha = subprocess.run(["sha1sum"], stdin=tar.stdout, check=True, capture_output=True, text=True)
    assert tar.wait() == 0
    assert sha.stdout.split()[0] == source_digest

    # tarfile: the size in the header and the bytes around the far end.
    with tarfile.open(out) as t:
        m = t.getmember("world.region")
        assert m.size == size
        small = t.extractfile("small").read()  # type: ignore[union-attr]
    assert small == b"small"
