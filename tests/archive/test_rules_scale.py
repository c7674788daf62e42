"""Ignore lines at scale: a path is matched against all lines at once, each path once per
backup, and the counting pass behind the progress percentage never outlives its backup.

Times are not asserted here (``bench/rules.py`` measures them): what is counted is the
regular-expression calls per path and the decisions per path.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import MemorySink

from bench.rules import realistic_lines, request_lines
from wingsbak.archive import ArchiveProgress, Cancelled, IgnoreRules, write_archive
from wingsbak.archive import rules as rules_mod
from wingsbak.archive.walk import Kind, walk

MATCHING = frozenset({"match", "fullmatch", "search", "Match"})


class _Counted:
    """A compiled regex or RE2 set whose matching calls are counted."""

    def __init__(self, inner: Any, counter: Counter[str]) -> None:
        self._inner = inner
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in MATCHING:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._counter["calls"] += 1
            return attr(*args, **kwargs)

        return counted


class CountingRe2:
    """google-re2 as the rules see it, counting every matching call of what it compiles."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.counter: Counter[str] = Counter()
        counter = self.counter

        class CountingSet:
            @staticmethod
            def FullMatchSet(options: Any = None) -> _Counted:
                return _Counted(real.Set.FullMatchSet(options), counter)

        self.Set = CountingSet

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def compile(self, *args: Any, **kwargs: Any) -> _Counted:
        return _Counted(self._real.compile(*args, **kwargs), self.counter)


def server_paths() -> list[tuple[str, bool]]:
    """2,000 paths of a server tree (files, and the directories above them)."""
    paths: list[tuple[str, bool]] = []
    for p in range(20):
        for sub in ("data", "logs", "cache", "lang", "tiles"):
            paths.append((f"plugins/P{p}/{sub}", True))
            exts = ("yml", "json", "log", "dat_old", "png", "gz", "tmp", "txt", "mca")
            paths.extend((f"plugins/P{p}/{sub}/f{n}.{exts[n % 9]}", False) for n in range(19))
    return paths


@pytest.fixture
def counting_re2(monkeypatch: pytest.MonkeyPatch) -> CountingRe2:
    if rules_mod._re2 is None:
        pytest.skip("counts google-re2's calls")
    counting = CountingRe2(rules_mod._re2)
    monkeypatch.setattr(rules_mod, "_re2", counting)
    return counting


def calls_per_path(counting: CountingRe2, lines: list[str]) -> float:
    rules = IgnoreRules(lines)
    paths = server_paths()
    counting.counter.clear()
    for path, is_dir in paths:
        rules.excludes(path, is_dir)
    return counting.counter["calls"] / len(paths)


def test_100_realistic_lines_cost_at_most_two_regex_calls_per_path(
    counting_re2: CountingRe2,
) -> None:
    # Line by line, this was one call per line until the last match: up to 100 per path.
    assert calls_per_path(counting_re2, realistic_lines(100)) <= 2


def test_thousands_of_request_lines_cost_no_regex_call(counting_re2: CountingRe2) -> None:
    # 9,500 names (the 55 KB request that held a backup slot for 822 s) are dictionary
    # keys, as are "*.ext" and "name*": adding them adds no regular-expression call.
    base = calls_per_path(counting_re2, realistic_lines(100))
    more = realistic_lines(100) + request_lines(9500) + [f"*.x{k}" for k in range(500)]
    assert calls_per_path(counting_re2, more) == base


def test_thousands_of_wildcard_lines_cost_one_call_per_chunk(counting_re2: CountingRe2) -> None:
    lines = [f"f{k}?x" for k in range(1000)]  # 1000 name wildcards: 8 sets of 128
    assert calls_per_path(counting_re2, lines) <= 8


class CountingRules(IgnoreRules):
    """Rules that count the decisions asked of them, per (path, is_dir)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines)
        self.asked: Counter[tuple[str, bool]] = Counter()
        self.lock = threading.Lock()

    def excludes(self, relpath: str, is_dir: bool = False) -> bool:
        with self.lock:
            self.asked[(relpath, is_dir)] += 1
        return super().excludes(relpath, is_dir)


def make_tree(root: Path, dirs: int = 30, files: int = 40) -> None:
    for d in range(dirs):
        sub = root / f"d{d}" / ("cache" if d % 5 == 0 else "data")
        sub.mkdir(parents=True)
        for n in range(files):
            (sub / f"f{n}.{'log' if n % 4 == 0 else 'txt'}").write_bytes(b"x" * n)


def test_each_path_is_matched_once_per_backup(tmp_path: Path) -> None:
    make_tree(tmp_path)
    rules = CountingRules(["*.log", "cache/", "!d3/data/f8.log"])
    reports: list[ArchiveProgress] = []
    write_archive(tmp_path, MemorySink(), rules, level="none", progress=reports.append)
    walked = {(e.relpath, e.kind is Kind.DIR) for e in walk(tmp_path, IgnoreRules())}
    inside_excluded = {p for p in walked if "/cache/" in p[0]}
    # Every entry outside an excluded directory decided exactly once, by one of the two walks
    # (the counting pass once asked again for each, in Python, line by line).
    assert dict(rules.asked) == dict.fromkeys(walked - inside_excluded, 1)
    assert reports[-1].bytes_total == reports[-1].bytes_read


def test_counting_pass_total_is_exact_once_the_writer_passed(tmp_path: Path) -> None:
    from wingsbak.archive.measure import TreeTotal

    make_tree(tmp_path)
    rules = IgnoreRules(["*.log", "cache/"])
    kept = sum(e.st.st_size for e in walk(tmp_path, rules) if e.kind is Kind.FILE)
    total = [0]
    measure = TreeTotal(tmp_path, rules, total).start()
    deadline = time.monotonic() + 60
    while not total[0]:  # a guard against a hang, not a speed requirement
        assert time.monotonic() < deadline, "the counting pass did not finish"
        time.sleep(0.01)
    # Until the writer has passed them, the excluded files still count...
    assert total[0] > kept
    for _ in walk(tmp_path, measure.writer_rules, on_excluded=measure.exclude_file):
        pass
    measure.stop()
    # ...and then the total is what the backup reads.
    assert total[0] == kept


def measure_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wingsbak-measure"]


class FailingSink:
    def write(self, data: bytes | memoryview, /) -> int:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("how", ["cancelled", "failed"])
def test_a_backup_that_ends_leaves_no_counting_pass_running(tmp_path: Path, how: str) -> None:
    # Enough entries and lines that the counting pass is still walking when the writer stops.
    make_tree(tmp_path, dirs=100, files=50)
    rules = IgnoreRules(realistic_lines(100) + [f"*/x{k}/*" for k in range(400)])
    cancel = threading.Event()
    if how == "cancelled":
        cancel.set()
        sink: Any = MemorySink()
    else:
        sink = FailingSink()
    assert not measure_threads()
    with pytest.raises(Cancelled if how == "cancelled" else OSError):
        write_archive(tmp_path, sink, rules, level="none", progress=lambda p: None, cancel=cancel)
    # Joined before write_archive returned: nothing walks the tree behind a finished backup.
    assert not measure_threads()
