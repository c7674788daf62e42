"""A file that grows or shrinks while it is read never fails the backup: the entry holds
exactly the size its header promised, and a warning says what happened."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from engine_helpers import archive_bytes, gnu_tar_names
from structlog.testing import capture_logs

import wingsbak.archive.progress as progress_mod
from wingsbak.archive.archiver import READ_CHUNK, ArchiveProgress, _Archiver
from wingsbak.archive.tarwrite import write_end
from wingsbak.archive.walk import walk

CASES = [
    (1000, 600),  # grew
    (600, 1000),  # shrank
    (0, 10),
    (10, 0),
    (READ_CHUNK + 10, READ_CHUNK),
    (READ_CHUNK, READ_CHUNK + 700),
    (2 * READ_CHUNK + 1, 3 * READ_CHUNK),
    (777, 777),  # unchanged: no warning
    (READ_CHUNK, READ_CHUNK),
]


@pytest.mark.parametrize(("actual", "promised"), CASES)
def test_copy_data_writes_exactly_the_promised_size(
    tmp_path: Path, actual: int, promised: int
) -> None:
    data = os.urandom(actual)
    (tmp_path / "live.log").write_bytes(data)
    (tmp_path / "next.txt").write_bytes(b"the entry after")
    buf = io.BytesIO()
    archiver = _Archiver(buf, None, None, [0])
    with capture_logs() as logs:
        for entry in walk(tmp_path):
            if entry.relpath == "live.log":
                fd = os.open(entry.name, os.O_RDONLY, dir_fd=entry.dir_fd)
                try:
                    archiver.copy_data(entry, fd, promised)
                finally:
                    os.close(fd)
            else:
                archiver.add(entry)
        write_end(buf)
    raw = buf.getvalue()
    expected = data[:promised] + bytes(max(0, promised - actual))

    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        live = tar.getmember("live.log")
        assert live.size == promised
        assert tar.extractfile(live).read() == expected  # type: ignore[union-attr]
        assert tar.extractfile("next.txt").read() == b"the entry after"  # type: ignore[union-attr]

    # GNU tar agrees, to the byte, and finds no junk between entries.
    listing = subprocess.run(
        ["tar", "-tvf", "-"], input=raw, check=True, capture_output=True
    ).stdout.decode()
    assert "live.log" in listing and "next.txt" in listing
    streamed = subprocess.run(
        ["tar", "-xOf", "-", "live.log"], input=raw, check=True, capture_output=True
    ).stdout
    assert streamed == expected

    events = {e["event"]: e for e in logs if e["log_level"] == "warning"}
    if actual > promised:
        assert set(events) == {"archive_file_grew"}
        assert events["archive_file_grew"]["archived_bytes"] == promised
    elif actual < promised:
        assert set(events) == {"archive_file_shrank"}
        assert events["archive_file_shrank"]["zero_padded"] == promised - actual
    else:
        assert events == {}
    assert archiver.bytes_read == min(actual, promised) + len(b"the entry after")


@pytest.mark.parametrize("change", ["truncate", "append"])
def test_file_changing_during_a_real_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """The whole pipeline, with the file really changed between two reads.

    The progress callback runs between reads of a large file; reporting on every check (the
    throttle set to zero) lets it change the file at a known point, without any timing.
    """
    monkeypatch.setattr(progress_mod, "PROGRESS_INTERVAL", 0.0)
    size = 4 * READ_CHUNK
    original = os.urandom(size)
    live = tmp_path / "live.dat"
    live.write_bytes(original)
    (tmp_path / "z_after.txt").write_text("after")
    changed: list[int] = []

    def progress(p: ArchiveProgress) -> None:
        if not changed and READ_CHUNK <= p.bytes_read < size:  # in the middle of live.dat
            changed.append(p.bytes_read)
            if change == "truncate":
                os.truncate(live, size // 2)
            else:
                with open(live, "ab") as f:
                    f.write(b"x" * READ_CHUNK)

    with capture_logs() as logs:
        data, result = archive_bytes(tmp_path, progress=progress)
    assert changed, "the file was never changed: the test did not exercise anything"
    assert b"z_after.txt" in gnu_tar_names(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        m = tar.getmember("live.dat")
        assert m.size == size
        got = tar.extractfile(m).read()  # type: ignore[union-attr]
        assert tar.extractfile("z_after.txt").read() == b"after"  # type: ignore[union-attr]
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    if change == "truncate":
        assert got == original[: size // 2] + bytes(size - size // 2)
        assert warnings == ["archive_file_shrank"]
    else:
        assert got == original
        assert warnings == ["archive_file_grew"]
    assert result.skipped == 0
