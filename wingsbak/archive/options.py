"""How a backup's archive is written: the settings and hooks a store hands the engine
(:func:`wingsbak.archive.archiver.write_archive`), typed in one place."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wingsbak.archive.archiver import ProgressCallback
from wingsbak.formats import BEST_SPEED, CHECKSUM_TYPES


@dataclass(slots=True, frozen=True)
class ArchiveOptions:
    level: str = BEST_SPEED  # a compression level of wingsbak.formats
    checksum: str = CHECKSUM_TYPES[0]
    write_limit: float = 0  # MiB/s; 0: unlimited
    progress: ProgressCallback | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    allow_unreadable: bool = False  # leave out what cannot be read instead of failing
    on_read_end: Callable[[], None] | None = None  # a job thread: the last file was read

    def engine_arguments(self) -> dict[str, Any]:
        """The keyword arguments of the engine's writers (``on_read_end`` when set)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if out["on_read_end"] is None:
            del out["on_read_end"]
        return out
