"""Progress is reported at most every 0.25 s of the job's clock, and once at the end.

The clock is injected: these tests decide what time it is, so they hold on any machine."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from engine_helpers import archive_bytes

from wingsbak.archive import ArchiveProgress
from wingsbak.archive.extract import RestoreProgress, extract_archive
from wingsbak.archive.progress import PROGRESS_INTERVAL, ProgressThrottle


class FakeClock:
    """Each reading returns the time, then moves it on by ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        now = self.now
        self.now += self.step
        return now


@pytest.mark.parametrize(
    ("step", "every"), [(0.1, 3), (0.125, 2), (0.0625, 4), (0.25, 1), (1.0, 1)]
)
def test_throttle_is_due_once_per_interval_of_its_clock(step: float, every: int) -> None:
    throttle = ProgressThrottle(clock=FakeClock(step))
    due = [throttle.due() for _ in range(30)]
    # The first reading (at construction) starts the interval; then due every `every` readings.
    assert [i for i, d in enumerate(due, start=1) if d] == list(range(every, 31, every))


def test_throttle_never_due_while_time_stands_still() -> None:
    throttle = ProgressThrottle(clock=FakeClock(0.0))
    assert not any(throttle.due() for _ in range(10_000))


def many_files(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"f{i:05d}.txt").write_text(f"file {i}\n")
    return root


def test_backup_of_many_files_reports_by_the_clock_not_by_the_file(tmp_path: Path) -> None:
    root = many_files(tmp_path / "root", 3000)
    still: list[ArchiveProgress] = []
    _, result = archive_bytes(root, progress=still.append, clock=FakeClock(0.0))
    # The archiver checks at every entry; with no time passing only the final report is made.
    assert len(still) == 1
    assert still[0].bytes_read == result.bytes_read and still[0].files == result.files

    moving: list[ArchiveProgress] = []
    clock = FakeClock(PROGRESS_INTERVAL)  # every reading is a whole interval later
    archive_bytes(root, progress=moving.append, clock=clock)
    assert len(moving) == clock.readings  # each check after the first reading reports, + final
    assert len(moving) > 3000
    assert [p.files for p in moving] == sorted(p.files for p in moving)
    assert moving[-1].files == result.files


def test_restore_reports_by_the_clock(tmp_path: Path) -> None:
    data, _ = archive_bytes(many_files(tmp_path / "root", 2000))
    still: list[RestoreProgress] = []
    extract_archive(io.BytesIO(data), tmp_path / "a", progress=still.append, clock=FakeClock(0))
    assert len(still) == 1

    moving: list[RestoreProgress] = []
    clock = FakeClock(PROGRESS_INTERVAL)
    extract_archive(io.BytesIO(data), tmp_path / "b", progress=moving.append, clock=clock)
    assert len(moving) >= 2000
    assert [p.bytes_read for p in moving] == sorted(p.bytes_read for p in moving)
