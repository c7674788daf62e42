"""The counting pass behind a backup's progress percentage: how many bytes of file data it
will read, measured in a thread beside the writer.

Each path is matched against the ignore rules once per backup. The two walks share their
directory decisions (the first to reach a directory decides and leaves the answer, the other
takes it); files are matched by the writer alone, and the counter counts every file of the
directories both enter. The writer takes the size of each file it excludes off the total, so
the total is exact once both have passed that file, and always once the backup ends.
"""

from __future__ import annotations

import contextlib
import os
import threading

from wingsbak.archive.rules import Excluder
from wingsbak.archive.walk import Kind, walk
from wingsbak.log import get_logger

log = get_logger(__name__)

# Directory decisions one walk has made and the other has not taken yet. Past this many
# (a walk far ahead of the other in a tree of that many directories) the other decides again.
MAX_SHARED_DECISIONS = 1 << 16


class SharedDirectoryDecisions:
    """Directory decisions of ``rules`` for two walks of one tree, each made once."""

    def __init__(self, rules: Excluder) -> None:
        self.rules = rules
        self._left: dict[str, bool] = {}
        self._lock = threading.Lock()

    def excludes_dir(self, relpath: str) -> bool:
        with self._lock:  # so that both walks never decide the same directory at once
            decided = self._left.pop(relpath, None)
            if decided is None:
                decided = self.rules.excludes(relpath, is_dir=True)
                if len(self._left) < MAX_SHARED_DECISIONS:
                    self._left[relpath] = decided
            return decided


class _WriterView:
    """The rules as the writer's walk asks them: directories through the shared decisions."""

    __slots__ = ("_shared", "empty")

    def __init__(self, shared: SharedDirectoryDecisions) -> None:
        self._shared = shared
        self.empty = shared.rules.empty

    def excludes(self, relpath: str, is_dir: bool = False) -> bool:
        if is_dir:
            return self._shared.excludes_dir(relpath)
        return self._shared.rules.excludes(relpath)


class _CounterView(_WriterView):
    """The rules as the counter's walk asks them: directories only (it counts every file)."""

    def excludes(self, relpath: str, is_dir: bool = False) -> bool:
        return is_dir and self._shared.excludes_dir(relpath)


class TreeTotal:
    """The counting pass of one backup, in its own thread (``wingsbak-measure``).

    ``writer_rules`` is what the writer's walk must be given; ``exclude_file`` what it calls
    for each file it excludes. ``stop`` ends the pass (between two entries) and waits for it:
    a backup that ends, however it ends, leaves no walk running behind it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        rules: Excluder,
        total: list[int],
        cancel: threading.Event | None = None,
    ) -> None:
        self._root = root
        self._total = total  # [0] is the published total: 0 until counted
        self._cancel = cancel
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counted = 0
        self._excluded = 0
        self._done = False
        self.entries = 0
        shared = SharedDirectoryDecisions(rules)
        self.writer_rules: Excluder = _WriterView(shared) if not rules.empty else rules
        self._counter_rules: Excluder = _CounterView(shared) if not rules.empty else rules
        self._thread = threading.Thread(target=self._run, name="wingsbak-measure")

    def start(self) -> TreeTotal:
        self._thread.start()
        return self

    def stopping(self) -> bool:
        return self._stop.is_set() or (self._cancel is not None and self._cancel.is_set())

    def _run(self) -> None:
        counted = 0
        try:
            with contextlib.closing(walk(self._root, self._counter_rules)) as entries:
                for entry in entries:
                    if self.stopping():
                        log.debug("archive_measure_stopped", entries=self.entries)
                        return
                    self.entries += 1
                    if entry.kind is Kind.FILE:
                        counted += entry.st.st_size
        except OSError as exc:  # the writer meets it too and reports it
            log.debug("archive_measure_failed", error=str(exc))
            return
        with self._lock:
            self._counted = counted
            self._done = True
            self._publish()
        log.debug("archive_measured", entries=self.entries, bytes=counted)

    def exclude_file(self, st: os.stat_result) -> None:
        with self._lock:
            self._excluded += st.st_size
            self._publish()

    def _publish(self) -> None:
        if self._done:
            self._total[0] = max(0, self._counted - self._excluded)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
