"""The archive engine: plain synchronous code, no asyncio and no HTTP."""

from wingsbak.archive.archiver import (
    ArchiveProgress,
    ArchiveResult,
    UnreadableEntry,
    archive_to_file,
    measure_tree,
    write_archive,
)
from wingsbak.archive.atomic import AtomicFile
from wingsbak.archive.ratelimit import Cancelled
from wingsbak.archive.rules import IgnoreRules

__all__ = [
    "ArchiveProgress",
    "ArchiveResult",
    "AtomicFile",
    "Cancelled",
    "IgnoreRules",
    "UnreadableEntry",
    "archive_to_file",
    "measure_tree",
    "write_archive",
]
