"""Archives in GNU tar's own formats (old GNU sparse files, incremental dumps), old V7 headers
and crafted pax values: restored as GNU tar restores them, and never a silent early stop."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from wingsbak.archive.extract import RestoreError, extract_archive, restore_archive_file

MIB = 1024 * 1024


def tree(root: Path) -> dict[str, object]:
    """Type, size and content of everything under ``root`` (what both extractions share)."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", path.stat().st_size, path.read_bytes())
    return out


def gnu_tar_extracts(archive: Path, into: Path) -> dict[str, object]:
    into.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(into)], check=True)
    return tree(into)


def holes_file(path: Path, regions: int = 6) -> None:
    """A file with ``regions`` data regions separated by holes, ending in a hole: more than
    the 4 an old GNU sparse header holds, so GNU tar writes an extension block (pax: a
    sparse 1.0 map at the start of the data)."""
    with open(path, "wb") as f:
        for i in range(regions):
            f.seek(i * MIB)
            f.write(b"D%d" % i * 100)
        f.truncate((regions + 1) * MIB)


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix"])
def test_gnu_sparse_file_with_extension_blocks(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    (src / "config").mkdir(parents=True)
    holes_file(src / "holes.bin")
    (src / "world.dat").write_bytes(b"world\n")
    (src / "config" / "server.properties").write_bytes(b"motd=hi\n")
    archive = tmp_path / "backup.tar.gz"
    subprocess.run(
        ["tar", f"--format={fmt}", "-S", "-czf", str(archive), "holes.bin", "world.dat", "config"],
        cwd=src,
        check=True,
    )
    listing = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, check=True)
    assert listing.stdout.decode().split() == [
        "holes.bin",
        "world.dat",
        "config/",
        "config/server.properties",
    ]
    dest = tmp_path / "dest"
    result = restore_archive_file(archive, dest)
    assert result.skipped == 0
    assert result.files == 3 and result.directories == 1
    assert tree(dest) == gnu_tar_extracts(archive, tmp_path / "oracle")
    restored = dest / "holes.bin"
    assert restored.read_bytes() == (src / "holes.bin").read_bytes()
    st = restored.stat()
    assert st.st_size == 7 * MIB
    assert st.st_blocks * 512 < st.st_size  # the holes stayed holes


def old_gnu_sparse_header(
    name: bytes, regions: list[tuple[int, int]], real_size: int, stored: int, extended: bool
) -> bytes:
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % stored
    h[136:148] = b"%011o\0" % 1_600_000_000
    h[156] = ord("S")
    h[257:265] = b"ustar  \0"
    for i, (offset, length) in enumerate(regions):
        h[386 + 24 * i : 386 + 24 * i + 24] = b"%011o\0%011o\0" % (offset, length)
    h[482] = 1 if extended else 0
    h[483:495] = b"%011o\0" % real_size
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def plain_tar(*names_data: tuple[str, bytes], end: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in names_data:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return raw if end else raw[: raw.rindex(data) + len(data) + (-len(data) % 512)]


def test_sparse_map_not_matching_its_data_is_skipped_in_sync(tmp_path: Path) -> None:
    # 5 regions: 4 in the header, the 5th in an extension block. They add up to 50 bytes
    # while the entry stores 512: the entry is skipped, the stream stays in sync.
    regions = [(i * 100, 10) for i in range(5)]
    ext = bytearray(512)
    ext[0:24] = b"%011o\0%011o\0" % regions[4]
    raw = (
        old_gnu_sparse_header(b"bad.bin", regions[:4], 1000, 512, extended=True)
        + bytes(ext)
        + b"x" * 512
        + plain_tar(("after.txt", b"after"))
    )
    dest = tmp_path / "dest"
    result = extract_archive(io.BytesIO(gzip.compress(raw)), dest)
    assert result.skipped == 1
    assert tree(dest) == {"after.txt": ("file", 5, b"after")}


def test_a_lone_zero_block_inside_the_archive_is_corrupt(tmp_path: Path) -> None:
    first = plain_tar(("a.txt", b"a"), end=False)
    raw = first + bytes(512) + plain_tar(("b.txt", b"b"))
    with pytest.raises(RestoreError, match="zero block"):
        extract_archive(io.BytesIO(gzip.compress(raw)), tmp_path / "dest")


def test_an_archive_ending_after_one_zero_block_is_truncated(tmp_path: Path) -> None:
    raw = plain_tar(("a.txt", b"a"), end=False) + bytes(512)
    with pytest.raises(RestoreError, match="truncated"):
        extract_archive(io.BytesIO(gzip.compress(raw)), tmp_path / "dest")


def test_gnu_incremental_archive_atime_ctime_are_no_prefix(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "plugins").mkdir(parents=True)
    (src / "world.dat").write_bytes(b"world\n")
    (src / "plugins" / "p.jar").write_bytes(b"jar")
    archive = tmp_path / "inc.tar.gz"
    subprocess.run(
        ["tar", "--format=gnu", "--incremental", "-czf", str(archive), "world.dat", "plugins"],
        cwd=src,
        check=True,
    )
    raw = gzip.decompress(archive.read_bytes())
    blocks = [raw[i : i + 512] for i in range(0, len(raw), 512)]
    # GNU headers ("ustar  \0") with atime and ctime where ustar has its name prefix, and
    # the directory as a dumpdir ('D', the names in it as its data).
    headers = [h for h in blocks if h[257:265] == b"ustar  \0"]
    assert len(headers) == 3
    assert all(h[345] != 0 for h in headers)
    assert {h[:9]: h[156:157] for h in headers}[b"plugins/\0"] == b"D"
    dest = tmp_path / "dest"
    result = restore_archive_file(archive, dest)
    assert result.skipped == 0 and result.directories == 1
    assert tree(dest) == gnu_tar_extracts(archive, tmp_path / "oracle")
    assert tree(dest) == {
        "plugins": ("dir",),
        "plugins/p.jar": ("file", 3, b"jar"),
        "world.dat": ("file", 6, b"world\n"),
    }


def pax_archive(*members: tuple[str, bytes, bytes, dict[str, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data, pax in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.linkname = "target" if kind == tarfile.SYMTYPE else ""
            info.pax_headers = pax
            t.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


def test_pax_names_with_nul_are_skipped(tmp_path: Path) -> None:
    gz = pax_archive(
        ("x", tarfile.REGTYPE, b"1", {"path": "a\x00b"}),
        ("l", tarfile.SYMTYPE, b"", {"linkpath": "a\x00b"}),
        ("h", tarfile.LNKTYPE, b"", {"linkpath": "after\x00x"}),
        ("after", tarfile.REGTYPE, b"2", {}),
    )
    dest = tmp_path / "dest"
    result = extract_archive(io.BytesIO(gz), dest)
    assert result.skipped == 3
    assert tree(dest) == {"after": ("file", 1, b"2")}


def test_pax_mtime_beyond_any_date_is_clamped(tmp_path: Path) -> None:
    huge = {"mtime": "100000000000000000000"}  # 1e20 s
    gz = pax_archive(
        ("d/", tarfile.DIRTYPE, b"", huge),
        ("d/x", tarfile.REGTYPE, b"1", huge),
        ("after", tarfile.REGTYPE, b"2", {"mtime": "-100000000000000000000"}),
    )
    dest = tmp_path / "dest"
    result = extract_archive(io.BytesIO(gz), dest)
    assert (result.files, result.directories, result.skipped) == (2, 1, 0)
    assert tree(dest) == {
        "after": ("file", 1, b"2"),
        "d": ("dir",),
        "d/x": ("file", 1, b"1"),
    }
    # As late (and as early) as the file system goes.
    assert (dest / "d" / "x").stat().st_mtime > 4e9
    assert (dest / "d").stat().st_mtime > 4e9
    assert (dest / "after").stat().st_mtime < 0


def test_v7_directory_entry_is_a_directory(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        d = tarfile.TarInfo("config/")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        t.addfile(d)
        f = tarfile.TarInfo("config/server.properties")
        f.size = 3
        t.addfile(f, io.BytesIO(b"a=1"))
    raw = bytearray(buf.getvalue())
    hdr = raw[:512]
    hdr[156] = 0  # V7: type NUL, no magic
    hdr[257:265] = bytes(8)
    hdr[148:156] = b"        "
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    raw[:512] = hdr
    archive = tmp_path / "v7.tar.gz"
    archive.write_bytes(gzip.compress(bytes(raw)))
    dest = tmp_path / "dest"
    result = restore_archive_file(archive, dest)
    assert (result.files, result.directories, result.skipped) == (1, 1, 0)
    assert tree(dest) == gnu_tar_extracts(archive, tmp_path / "oracle")
    assert tree(dest) == {"config": ("dir",), "config/server.properties": ("file", 3, b"a=1")}
