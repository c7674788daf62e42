"""Extended headers (pax, pax global, GNU long names and links) are capped, one by one and in
total before an entry: a bigger one is a corrupt archive, and global headers cannot pile up."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from restore_helpers import restore_leftovers, snapshot

from wingsbak.archive.extract import RestoreError, extract_archive
from wingsbak.archive.tarread import MAX_EXTENDED_HEADER, MAX_EXTENDED_HEADERS_TOTAL

KIB = 1024


def entry(name: str, data: bytes = b"x") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_600_000_000
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def global_header(records: dict[str, str]) -> bytes:
    return tarfile.TarInfo.create_pax_global_header(records)


def pax_entry(name: str, records: dict[str, str]) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 1
    info.pax_headers = records
    return info.tobuf(tarfile.PAX_FORMAT) + b"x" + bytes(511)


def long_name_entry(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info.tobuf(tarfile.GNU_FORMAT) + b"x" + bytes(511)


def archive(*parts: bytes) -> bytes:
    return gzip.compress(b"".join(parts) + bytes(1024), compresslevel=1)


@pytest.fixture
def server(tmp_path: Path) -> Path:
    root = tmp_path / "server"
    (root / "world").mkdir(parents=True)
    (root / "world" / "level.dat").write_bytes(b"the world" * 1000)
    (root / "server.properties").write_text("motd=kept\n")
    return root


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            lambda: [global_header({"comment": "g" * (2 * MAX_EXTENDED_HEADER)}), entry("f")],
            id="one-big-global",
        ),
        pytest.param(
            lambda: [pax_entry("f", {"comment": "p" * (2 * MAX_EXTENDED_HEADER)})],
            id="one-big-pax",
        ),
        pytest.param(lambda: [long_name_entry("n/" * MAX_EXTENDED_HEADER)], id="gnu-long-name"),
        pytest.param(
            lambda: [
                *(
                    global_header({f"k{i}": "v" * (MAX_EXTENDED_HEADER // 2)})
                    for i in range(2 * MAX_EXTENDED_HEADERS_TOTAL // MAX_EXTENDED_HEADER + 1)
                ),
                entry("f"),
            ],
            id="many-globals-before-one-entry",
        ),
    ],
)
def test_oversized_extended_headers_are_a_corrupt_archive(
    server: Path, body: object
) -> None:
    before = snapshot(server)
    data = archive(*body())  # type: ignore[operator]
    with pytest.raises(RestoreError, match="extended header"):
        extract_archive(io.BytesIO(data), server, truncate=True)
    assert snapshot(server) == before
    assert restore_leftovers(server) == []


def restore_peak(data: bytes, dest: Path) -> int:
    """The most memory Python held while restoring ``data``."""
    tracemalloc.start()
    try:
        extract_archive(io.BytesIO(data), dest)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_global_headers_between_entries_do_not_accumulate(tmp_path: Path) -> None:
    """Each entry follows a global header, each well under the cap: with a key of its own
    each, they must cost no more memory than the same headers repeating one key (only the
    records that matter to a restore are kept)."""

    def with_globals(key: str) -> bytes:
        parts: list[bytes] = []
        for i in range(80):  # 20 MiB of global records in all
            parts.append(global_header({key.format(i): "v" * (256 * KIB)}))
            parts.append(entry(f"f{i}", b"%d" % i))
        parts.append(global_header({"mtime": "1700000000"}))  # one that does matter
        parts.append(entry("last"))
        return archive(*parts)

    same = restore_peak(with_globals("vendor.same"), tmp_path / "same")
    distinct = restore_peak(with_globals("vendor.key{}"), tmp_path / "distinct")
    assert distinct - same < 4 * 1024 * KIB, f"{distinct} bytes at peak against {same}"
    dest = tmp_path / "distinct"
    assert (dest / "f79").read_bytes() == b"79"
    assert int((dest / "last").stat().st_mtime) == 1_700_000_000


def test_headers_under_the_caps_restore(tmp_path: Path) -> None:
    """Real long names and big pax records (xattrs, say) stay well inside the caps."""
    long_dir = "/".join(["d" * 200] * 10)
    parts = [
        global_header({"comment": "c" * (64 * KIB)}),
        pax_entry(f"{long_dir}/file", {"SCHILY.xattr.user.big": "x" * (64 * KIB)}),
        long_name_entry(f"{long_dir}/gnu"),
    ]
    dest = tmp_path / "dest"
    result = extract_archive(io.BytesIO(archive(*parts)), dest)
    assert result.files == 2
    assert (dest / long_dir / "file").read_bytes() == b"x"
