"""Atomic commit, errors from the sink, cancellation and progress."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from engine_helpers import MemorySink, archive_bytes, gzip_test

import wingsbak.archive.codecs as wgzip
import wingsbak.archive.progress as progress_mod
from wingsbak.archive import ArchiveProgress, AtomicFile, Cancelled, archive_to_file, write_archive

HANG_GUARD = 120  # seconds; only stops a hung test, never judges speed


def run_guarded(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a thread; its exception or result, or a failure if it hangs."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    if worker.is_alive():
        pytest.fail("the archiver hung")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


class FullDiskSink(MemorySink):
    """Accepts ``capacity`` bytes, then fails as a full disk does."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.written = 0

    def write(self, data: bytes | memoryview, /) -> int:
        if self.written + len(data) > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return super().write(data)


class FullDiskFile(AtomicFile):
    """An atomic file on a disk that fills up after ``capacity`` bytes."""

    capacity = 0

    def write(self, data: bytes | memoryview) -> int:
        if self._written + len(data) > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def source_tree(root: Path, mib: int = 6) -> Path:
    root.mkdir()
    for i in range(mib):
        (root / f"region{i}.mca").write_bytes(os.urandom(1024 * 1024))
    (root / "server.properties").write_text("motd=hello\n" * 100)
    return root


ENGINE_PATHS = [
    pytest.param(True, "best_speed", id="isal"),
    pytest.param(False, "best_speed", id="zlib"),
    pytest.param(True, "none", id="none"),
]


@pytest.mark.parametrize(("isal", "level"), ENGINE_PATHS)
@pytest.mark.parametrize("capacity", [0, 100, 3 * 1024 * 1024])
def test_sink_error_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isal: bool, level: str, capacity: int
) -> None:
    if isal and not wgzip.HAVE_ISAL:
        pytest.skip("isal is not installed")
    monkeypatch.setattr(wgzip, "HAVE_ISAL", isal)
    root = source_tree(tmp_path / "root")
    sink = FullDiskSink(capacity)
    with pytest.raises(OSError) as info:
        run_guarded(lambda: write_archive(root, sink, level=level))
    assert info.value.errno == errno.ENOSPC


@pytest.mark.parametrize("capacity", [0, 100, 3 * 1024 * 1024])
def test_full_disk_leaves_no_file(tmp_path: Path, capacity: int) -> None:
    root = source_tree(tmp_path / "root")
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    final = out_dir / "backup-1.tar.gz"
    FullDiskFile.capacity = capacity

    def attempt() -> None:
        with FullDiskFile(final) as f:
            write_archive(root, f)
            f.commit()

    with pytest.raises(OSError) as info:
        run_guarded(attempt)
    assert info.value.errno == errno.ENOSPC
    assert list(out_dir.iterdir()) == []


_FSIZE_CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
from wingsbak.archive import archive_to_file
archive_to_file(sys.argv[1], sys.argv[2])
"""


def test_real_write_error_through_archive_to_file(tmp_path: Path) -> None:
    """A real error from the kernel (EFBIG under RLIMIT_FSIZE), in a child process."""
    root = source_tree(tmp_path / "root")
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    final = out_dir / "backup-2.tar.gz"
    proc = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(root), str(final), str(2 * 1024 * 1024)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert proc.returncode != 0
    assert "File too large" in proc.stderr  # EFBIG; the child ignores SIGXFSZ to get it
    assert list(out_dir.iterdir()) == []
    # The control: without the limit the same child succeeds, so the limit caused the failure.
    ok = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(root), str(final), str(resource.RLIM_INFINITY)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [final.name, final.name + ".sha1"]


@pytest.fixture
def report_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress on every check instead of four times a second: deterministic, no timing."""
    monkeypatch.setattr(progress_mod, "PROGRESS_INTERVAL", 0.0)


@pytest.mark.usefixtures("report_every_check")
def test_cancel_from_progress_leaves_no_file(tmp_path: Path) -> None:
    root = source_tree(tmp_path / "root")
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    cancel = threading.Event()
    calls: list[ArchiveProgress] = []

    def progress(p: ArchiveProgress) -> None:
        calls.append(p)
        if len(calls) == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        run_guarded(
            lambda: archive_to_file(root, out_dir / "b.tar.gz", progress=progress, cancel=cancel)
        )
    assert list(out_dir.iterdir()) == []
    assert len(calls) == 2  # stopped at the next check, not at the end


@pytest.mark.usefixtures("report_every_check")
def test_cancel_while_rate_limited(tmp_path: Path) -> None:
    """Cancelled while the writer waits on a very low write limit: it still stops."""
    root = source_tree(tmp_path / "root", mib=8)
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    cancel = threading.Event()
    first = threading.Event()

    def progress(p: ArchiveProgress) -> None:
        first.set()

    threading.Thread(target=lambda: first.wait() and cancel.set(), daemon=True).start()
    with pytest.raises(Cancelled):
        run_guarded(
            lambda: archive_to_file(
                root, out_dir / "b.tar.gz", write_limit=0.01, progress=progress, cancel=cancel
            )
        )
    assert list(out_dir.iterdir()) == []


def test_cancel_before_start(tmp_path: Path) -> None:
    root = source_tree(tmp_path / "root", mib=1)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        archive_to_file(root, tmp_path / "b.tar.gz", cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


@pytest.mark.usefixtures("report_every_check")
def test_progress_grows_to_the_total(tmp_path: Path) -> None:
    root = source_tree(tmp_path / "root", mib=4)
    (root / "sub").mkdir()
    (root / "sub" / "small").write_text("x" * 1000)
    calls: list[ArchiveProgress] = []
    data, result = archive_bytes(root, progress=calls.append)
    gzip_test(data)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert len(calls) >= 2
    reads = [p.bytes_read for p in calls]
    files = [p.files for p in calls]
    assert reads == sorted(reads) and files == sorted(files)
    assert reads[0] < reads[-1]
    last = calls[-1]
    assert last.bytes_read == result.bytes_read == total
    assert last.bytes_total == total
    assert last.files == result.files
    assert last.percent == 100.0
    assert all(p.bytes_total in (0, total) for p in calls)
    assert all(0.0 <= p.percent <= 100.0 for p in calls)


def test_progress_is_optional_and_silent(tmp_path: Path) -> None:
    root = source_tree(tmp_path / "root", mib=1)
    data, result = archive_bytes(root)
    assert result.bytes_read == 1024 * 1024 + len("motd=hello\n" * 100)
    gzip_test(data)


def test_a_cancel_that_comes_during_the_fsync_keeps_the_final_name_free(tmp_path: Path) -> None:
    # A stopping daemon reports a cancelled backup as failed; its file must not then appear.
    final = tmp_path / "b.tar.gz"
    cancel = threading.Event()
    with pytest.raises(Cancelled), AtomicFile(final) as f:
        f.write(b"archive bytes")
        cancel.set()
        f.commit(cancel)
    assert list(tmp_path.iterdir()) == []
    with AtomicFile(final) as f:  # not cancelled: committed as before
        f.write(b"archive bytes")
        f.commit(threading.Event())
    assert final.read_bytes() == b"archive bytes"
