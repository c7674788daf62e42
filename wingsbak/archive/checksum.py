"""A backup's checksum: taken of the archive's bytes as they pass on to their sink (with
their count and a rate limit), recorded beside a local archive in a sidecar that
``sha1sum -c`` reads, and taken again of a file."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol

from wingsbak.archive.atomic import AtomicFile
from wingsbak.archive.ratelimit import Cancelled, TokenBucket
from wingsbak.formats import CHECKSUM_TYPES


class Sink(Protocol):
    """Where archive bytes go: a local file, a stream of S3 parts, anything with ``write``."""

    def write(self, data: bytes | memoryview, /) -> int: ...


class MeteredWriter:
    """Passes bytes to ``sink`` while hashing and counting them, at most ``limit`` bytes/s."""

    def __init__(
        self,
        sink: Sink,
        checksum: str = "sha1",
        limiter: TokenBucket | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.sink = sink
        self.checksum_type = checksum
        self.hasher = hashlib.new(checksum)
        self.size = 0
        self.limiter = limiter
        self.cancel = cancel

    def write(self, data: bytes | memoryview) -> int:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")
        n = len(data)
        if self.limiter is not None:
            self.limiter.consume(n)
        self.hasher.update(data)
        self.sink.write(data)
        self.size += n
        return n

    def flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    # Enough of the file protocol for gzip writers that take a file object.
    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


def sidecar_path(archive: str | os.PathLike[str], checksum_type: str) -> Path:
    return Path(f"{os.fspath(archive)}.{checksum_type}")


def write_sidecar(archive: str | os.PathLike[str], checksum: str, checksum_type: str) -> Path:
    """``<archive>.sha1`` in the format ``sha1sum -c`` reads (name relative to its folder)."""
    path = sidecar_path(archive, checksum_type)
    with AtomicFile(path, mode=0o644) as f:
        f.write(f"{checksum}  {Path(archive).name}\n".encode())
        f.commit()
    return path


def read_sidecar(archive: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(checksum type, hex digest) from the archive's sidecar, or None when it has none."""
    for kind in CHECKSUM_TYPES:
        try:
            text = sidecar_path(archive, kind).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        fields = text.split()
        if fields:
            return kind, fields[0].lower()
    return None


def file_checksum(path: str | os.PathLike[str], kind: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, kind).hexdigest()
