"""Gzip compression at Wings' levels: ISA-L when installed, zlib otherwise.

Both produce ordinary gzip. ISA-L's threaded writer compresses blocks on worker threads with
the previous block's last 32 KiB as dictionary (as pigz does), so it costs next to nothing in
ratio while using every core; its threads write the output, so the checksum, rate limit and
disk write all run beside the tar producer.
"""

from __future__ import annotations

import gzip as _zlib_gzip
import io
import os
from typing import BinaryIO

try:
    from isal import igzip_threaded

    HAVE_ISAL = True
except ImportError:  # pragma: no cover - exercised on machines without isal wheels
    HAVE_ISAL = False

NONE = "none"
BEST_SPEED = "best_speed"
BEST_COMPRESSION = "best_compression"
LEVELS = (NONE, BEST_SPEED, BEST_COMPRESSION)

# ISA-L has levels 0-3; its level 1 is several times faster than zlib -1 at a similar ratio.
_ISAL_LEVEL = {BEST_SPEED: 1, BEST_COMPRESSION: 3}
_ZLIB_LEVEL = {NONE: 0, BEST_SPEED: 1, BEST_COMPRESSION: 9}
BLOCK_SIZE = 1024 * 1024


def compression_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def open_gzip_writer(
    raw: BinaryIO, level: str = BEST_SPEED, threads: int | None = None
) -> BinaryIO:
    """A writable that gzips into ``raw``; closing it finishes the gzip stream (not ``raw``)."""
    if level not in LEVELS:
        raise ValueError(f"unknown compression level {level!r}; use one of {', '.join(LEVELS)}")
    if HAVE_ISAL and level != NONE:
        return igzip_threaded.open(  # type: ignore[return-value]
            raw,
            "wb",
            compresslevel=_ISAL_LEVEL[level],
            threads=threads if threads is not None else compression_threads(),
            block_size=BLOCK_SIZE,
        )
    gz = _zlib_gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_ZLIB_LEVEL[level], mtime=0)
    return io.BufferedWriter(gz, buffer_size=BLOCK_SIZE)  # type: ignore[arg-type,return-value]
