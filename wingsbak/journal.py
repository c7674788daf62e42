"""A small journal of the jobs that are running, so a daemon killed mid-backup can clean up and
tell the panel after it starts again. One JSON file, rewritten atomically on every change."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic

log = get_logger(__name__)

JOURNAL_NAME = ".wingsbak-journal.json"


class Journal:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / JOURNAL_NAME
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[str, dict[str, Any]]:
        """The entries an earlier run left behind (jobs it did not finish)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("journal_unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(data, dict):
            return {}
        with self._lock:
            self._entries = {k: v for k, v in data.items() if isinstance(v, dict)}
            return dict(self._entries)

    def _write(self) -> None:
        write_json_atomic(self.path, self._entries)

    def record(self, key: str, **fields: Any) -> None:
        with self._lock:
            self._entries[key] = {**self._entries.get(key, {}), **fields}
            self._write()

    def forget(self, key: str) -> None:
        """Drop a finished job. Never raises: a job must not fail because the journal cannot
        be rewritten (a full disk); the stale entry is then only reported again at start."""
        with self._lock:
            if self._entries.pop(key, None) is not None:
                try:
                    self._write()
                except OSError as exc:
                    log.error("journal_not_saved", path=str(self.path), error=str(exc))
