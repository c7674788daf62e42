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
    result = archive_file(root, out, index=True)
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


def _writer_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("gzmember")]


@pytest.mark.parametrize(
    ("isal", "threads", "inline"),
    [(True, 1, False), (True, 3, False), (False, 2, False), (False, 1, True)],
    ids=["isal-1", "isal-3", "zlib-2", "zlib-inline"],
)
@pytest.mark.parametrize("total", [0, 1, 3 * 65536, MEMBER_SIZE + 12345], ids=str)
def test_the_writer_keeps_blocks_in_order_whatever_the_threads_and_write_sizes(
    tmp_path: Path, isal: bool, threads: int, inline: bool, total: int
) -> None:
    """Blocks go to the workers in turn and come back in turn: the stream gzip reads is the
    input, byte for byte, for odd write sizes, a stream of no bytes and a partial last member."""
    from wingsbak.archive.gzmembers import MemberWriter

    if isal and not wgzip.HAVE_ISAL:
        pytest.skip("isal is not installed")
    data = (os.urandom(40_000) + b"text " * 20_000) * (total // 140_000 + 1)
    data = data[:total]
    out = tmp_path / "out.gz"
    with open(out, "wb") as raw:
        writer = MemberWriter(raw, 1, threads, isal=isal, inline=inline,
                              member_size=256 * 1024, block_size=64 * 1024)
        pos, step = 0, 1
        while pos < len(data):
            writer.write(data[pos : pos + step])
            pos += step
            step = step * 3 + 7  # 1, 10, 37, ... across block ends
        writer.close()
    gzip_test(out)
    assert subprocess.run(["gzip", "-dc", str(out)], capture_output=True, check=True).stdout == data
    assert [u for _, u in writer.members][:-1] == list(range(0, max(total, 1), 256 * 1024))
    assert not _writer_threads()


class _FailingSink:
    def __init__(self, fail_at: int) -> None:
        self.writes = 0
        self.fail_at = fail_at

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes >= self.fail_at:
            raise OSError(28, "No space left on device")
        return len(data)


@pytest.mark.parametrize("inline", [False, True], ids=["threads", "inline"])
def test_a_sink_that_fails_stops_the_writer_with_its_error_and_no_thread_left(
    inline: bool,
) -> None:
    import threading

    from wingsbak.archive.gzmembers import MemberWriter

    sink = _FailingSink(fail_at=3)
    writer = MemberWriter(sink, 1, 2, isal=wgzip.HAVE_ISAL, inline=inline,
                          member_size=128 * 1024, block_size=64 * 1024)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for _ in range(200):  # far more than the buffers in flight: the producer must see it
                writer.write(os.urandom(64 * 1024))
        except OSError as exc:
            errors.append(exc)
        try:
            writer.close()
        except OSError as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(120)
    assert not producer.is_alive(), "the producer waits forever on a writer that failed"
    assert errors and all(e.errno == 28 for e in errors)  # type: ignore[attr-defined]
    assert sink.writes == 3
    assert not _writer_threads()


def test_a_compressor_that_fails_ends_the_stream_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wingsbak.archive import gzmembers

    calls = {"n": 0}
    real = gzmembers._BlockCompressor.__call__

    def flaky(self: object, data: memoryview, zdict: bytes) -> tuple[bytes, int]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise MemoryError("no room for the block")
        return real(self, data, zdict)  # type: ignore[arg-type]

    monkeypatch.setattr(gzmembers._BlockCompressor, "__call__", flaky)
    sink = io.BytesIO()
    writer = gzmembers.MemberWriter(sink, 1, 2, isal=wgzip.HAVE_ISAL,
                                    member_size=128 * 1024, block_size=64 * 1024)
    with pytest.raises(MemoryError, match="no room"):
        for _ in range(50):
            writer.write(os.urandom(64 * 1024))
        writer.close()
    with pytest.raises(MemoryError):  # the stream is not whole: closing says so, and waits
        writer.close()
    assert not _writer_threads()


def test_a_compressor_that_cannot_be_made_fails_the_writer_instead_of_hanging() -> None:
    """A worker whose compressor cannot be made (ISA-L refuses a level; no memory for its
    buffers) answers each block with that error: the writer waits on every worker in turn,
    so a worker that ended without a word held the producer and ``close`` forever."""
    import threading

    from wingsbak.archive.gzmembers import MemberWriter

    if not wgzip.HAVE_ISAL:
        pytest.skip("isal is not installed")
    writer = MemberWriter(io.BytesIO(), 7, 2, isal=True,  # ISA-L's levels are 0 to 3
                          member_size=128 * 1024, block_size=64 * 1024)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for _ in range(50):  # more than the buffers in flight
                writer.write(os.urandom(64 * 1024))
        except ValueError as exc:
            errors.append(exc)
        try:
            writer.close()
        except ValueError as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(120)
    assert not producer.is_alive(), "the producer waits forever on a worker that never began"
    assert errors and all("compression level" in str(e) for e in errors)
    assert not _writer_threads()


@pytest.mark.parametrize("inline", [False, True], ids=["threads", "inline"])
def test_a_write_after_close_is_refused_and_the_stream_stays_whole(
    tmp_path: Path, inline: bool
) -> None:
    """Closed, the writer takes nothing more: the workers have ended (a block would wait for
    them forever) and the stream is finished (bytes after its size member would be lost)."""
    import threading

    from wingsbak.archive.gzmembers import MemberWriter

    out = tmp_path / "out.gz"
    with open(out, "wb") as raw:
        writer = MemberWriter(raw, 1, 2, isal=wgzip.HAVE_ISAL and not inline, inline=inline,
                              member_size=128 * 1024, block_size=64 * 1024)
        writer.write(b"kept " * 1000)
        writer.close()
        refused: list[BaseException] = []

        def late() -> None:
            try:
                writer.write(os.urandom(64 * 1024 * 8))  # more than the buffers in flight
            except ValueError as exc:
                refused.append(exc)

        thread = threading.Thread(target=late, daemon=True)
        thread.start()
        thread.join(120)
        assert not thread.is_alive(), "a write after close waits forever on ended workers"
        assert refused and "closed" in str(refused[0])
        writer.close()  # a second close is nothing
    assert subprocess.run(["gzip", "-dc", str(out)], capture_output=True, check=True).stdout == (
        b"kept " * 1000
    )
    assert not _writer_threads()
