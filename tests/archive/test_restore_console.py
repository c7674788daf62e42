"""A restore's console lines (issue 19, item 8): Wings prints ``(restoring): <file>`` for each
file it writes (server/backup.go RestoreBackup); wingsbak prints them too, at most 10 a second
per server, and one line counting the files it did not name. The extractor hands the names
over with its progress reports, a few per report, never one call per file.

The clock is injected: these tests decide what time it is."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from engine_helpers import archive_bytes
from test_progress_throttle import FakeClock, many_files

from wingsbak.archive.extract import NAMES_PER_REPORT, RestoreProgress, extract_archive
from wingsbak.archive.progress import PROGRESS_INTERVAL
from wingsbak.events import RestoringLines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ten_names_a_second_then_a_count_of_the_others() -> None:
    clock = Clock()
    lines = RestoringLines(clock=clock)
    names = [f"world/r{i}.mca" for i in range(10)]
    assert lines.take(names, 25) == [f"(restoring): {n}" for n in names]
    clock.now += 0.5
    assert lines.take(["late.txt"], 4) == []  # the second's ten are shown: counted
    clock.now += 0.6  # a new second: the count first, then names again
    assert lines.take(["next.txt"], 1) == ["(restoring): 19 more files", "(restoring): next.txt"]
    assert lines.flush() == []
    assert len(lines.take(names, 12)) == 9  # the same second: one name shown, room for nine
    assert lines.flush() == ["(restoring): 3 more files"]


def test_the_room_of_a_second_is_shared_by_its_reports() -> None:
    clock = Clock()
    lines = RestoringLines(clock=clock)
    assert len(lines.take([f"a{i}" for i in range(6)], 6)) == 6
    clock.now += 0.25
    assert lines.take([f"b{i}" for i in range(6)], 6) == [f"(restoring): b{i}" for i in range(4)]
    clock.now += 0.25
    assert lines.take([], 7) == []
    assert lines.flush() == ["(restoring): 9 more files"]
    assert lines.flush() == []
    clock.now += 5
    assert lines.take(["c"], 2) == ["(restoring): c"]
    assert lines.flush() == ["(restoring): 1 more file"]


def test_the_extractor_names_a_few_files_per_report_and_counts_them_all(tmp_path: Path) -> None:
    data, _ = archive_bytes(many_files(tmp_path / "root", 300))
    reports: list[RestoreProgress] = []
    clock = FakeClock(PROGRESS_INTERVAL / 8)  # a report every 8 readings (a few files)
    out = tmp_path / "out"
    result = extract_archive(io.BytesIO(data), out, progress=reports.append, clock=clock)
    assert result.files == 300
    assert len(reports) > 3
    assert all(len(r.names) <= NAMES_PER_REPORT for r in reports)
    assert reports[-1].files_written == 300
    written = [r.files_written for r in reports]
    assert written == sorted(written)
    # Each report names files restored since the one before it, in the archive's order.
    previous = 0
    for report in reports:
        assert len(report.names) == min(NAMES_PER_REPORT, report.files_written - previous)
        previous = report.files_written
    named = [n for r in reports for n in r.names]
    assert len(set(named)) == len(named)
    assert set(named) <= {f"f{i:05d}.txt" for i in range(300)}


def test_without_time_passing_one_report_names_the_first_files(tmp_path: Path) -> None:
    data, _ = archive_bytes(many_files(tmp_path / "root", 50))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        order = [m.name.removeprefix("./") for m in tar if m.isfile()]
    reports: list[RestoreProgress] = []
    extract_archive(io.BytesIO(data), tmp_path / "out", progress=reports.append, clock=FakeClock(0))
    assert len(reports) == 1
    assert reports[0].files_written == 50
    assert reports[0].names == tuple(order[:NAMES_PER_REPORT])
