"""Write one backup archive (a gzip tar) of a server root into a sink, as a single stream.

files -> tar -> gzip (worker threads) -> checksum, byte count, rate limit -> sink.
Plain synchronous code for a worker thread; it never reads the archive back. Where each
entry's header and data land in the tar stream, and where each gzip member starts, are noted
as it goes: what the archive's index (archive/index.py) is made of.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from wingsbak.archive import holes, tarwrite
from wingsbak.archive.atomic import AtomicFile
from wingsbak.archive.checksum import MeteredWriter, Sink, write_sidecar
from wingsbak.archive.codecs import BLOCK_SIZE, GZIP
from wingsbak.archive.index import (
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    IndexData,
    write_index_for_file,
)
from wingsbak.archive.measure import TreeTotal
from wingsbak.archive.progress import Clock, ProgressThrottle
from wingsbak.archive.ratelimit import MIB, Cancelled, TokenBucket
from wingsbak.archive.rules import IgnoreRules
from wingsbak.archive.walk import Kind, WalkEntry, raise_if_out_of_resources, walk
from wingsbak.formats import BEST_SPEED
from wingsbak.log import get_logger

log = get_logger(__name__)

# One block of the tar stream: what the compressor gets per write (its own block size, so
# ISA-L's threaded writer never splits or merges them).
BATCH = BLOCK_SIZE
_ZEROS = memoryview(bytes(BATCH))
READ_CHUNK = BATCH  # the largest single read of file data
_INDEX_KIND = {Kind.FILE: KIND_FILE, Kind.DIR: KIND_DIR, Kind.SYMLINK: KIND_SYMLINK}
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(slots=True, frozen=True)
class ArchiveResult:
    size: int  # bytes of the compressed archive
    checksum: str
    checksum_type: str
    files: int  # entries written: files, directories and symlinks
    skipped: int  # entries left out: FIFOs, sockets, devices and ``unreadable`` (each logged)
    unreadable: int  # of those, the ones that could not be read
    bytes_read: int  # file data read from the server root
    # The archive's entries and members, for its index (None: the writer has no members).
    index: IndexData | None = None


@dataclass(slots=True)
class ArchiveProgress:
    bytes_read: int
    bytes_total: int  # 0 while still being measured
    files: int

    @property
    def percent(self) -> float:
        if not self.bytes_total:
            return 0.0
        return min(100.0, 100.0 * self.bytes_read / self.bytes_total)


ProgressCallback = Callable[[ArchiveProgress], None]


class UnreadableEntry(Exception):
    """An entry the backup was asked to include could not be read: the backup fails rather
    than be reported complete without it (unless leaving such entries out is allowed)."""


def measure_tree(root: str | os.PathLike[str], rules: IgnoreRules | None = None) -> int:
    """Bytes of file data a backup of ``root`` would read, without reading any."""
    return sum(bytes_to_read(e.st) for e in walk(root, rules) if e.kind is Kind.FILE)


def bytes_to_read(st: os.stat_result) -> int:
    """A file's data as a backup reads it: a sparse file's holes are never read."""
    if holes.may_have_holes(st):
        return st.st_blocks * 512
    return st.st_size


class _Archiver:
    """Builds the tar stream in one reused block of ``BATCH`` bytes and hands the compressor
    whole blocks: headers and file data are copied (file data read by ``readv``) straight into
    it, so a small file costs one read and no allocation, and the compressor sees a few large
    writes instead of three small ones per file.

    ``add`` leaves the stream complete in ``out`` after each entry; the archive loop uses
    ``add_batched`` and calls ``flush`` at the end.
    """

    def __init__(
        self,
        out: BinaryIO,
        cancel: threading.Event | None,
        progress: ProgressCallback | None,
        bytes_total: list[int],
        clock: Clock = time.monotonic,
        allow_unreadable: bool = False,
        index: bool = False,
    ) -> None:
        self.out = out
        self.allow_unreadable = allow_unreadable
        self.cancel = cancel
        self.progress = progress
        self.bytes_total = bytes_total
        self.bytes_read = 0
        self.files = 0
        self.skipped = 0
        self.unreadable = 0
        self.throttle = ProgressThrottle(clock=clock)
        self.block = bytearray(BATCH)
        self.view = memoryview(self.block)
        self.pos = 0
        self.offset = 0  # bytes of the tar stream handed to ``out`` so far
        self.index = IndexData() if index else None

    def skip(self, relpath: str, reason: str) -> None:
        """An entry that could not be read (no access, an I/O error)."""
        if not self.allow_unreadable:
            raise UnreadableEntry(
                f"cannot read {relpath!r} ({reason}); a backup without it would be incomplete"
            )
        self.unreadable += 1
        self.skipped += 1
        log.warning("archive_entry_skipped", path=relpath, reason=reason)

    def skip_special(self, relpath: str, reason: str) -> None:
        """A FIFO, socket or device: never archived, not a failure."""
        self.skipped += 1
        log.warning("archive_entry_skipped", path=relpath, reason=reason)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("backup cancelled")
        if self.progress is not None and self.throttle.due():
            self.report()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(ArchiveProgress(self.bytes_read, self.bytes_total[0], self.files))

    def flush(self) -> None:
        """Hand what the block holds to ``out``; the writers copy it, so it can be reused."""
        if self.pos:
            self.out.write(self.view[: self.pos])
            self.offset += self.pos
            self.pos = 0

    def _flush_full(self) -> None:
        self.flush()
        self.check()  # once a block: a big file still notices a cancel within a MiB

    def put(self, data: bytes) -> None:
        pos = self.pos
        end = pos + len(data)
        if end <= BATCH:
            self.view[pos:end] = data
            self.pos = end
            return
        view = memoryview(data)
        while view:
            if self.pos == BATCH:
                self._flush_full()
            k = min(BATCH - self.pos, len(view))
            self.view[self.pos : self.pos + k] = view[:k]
            self.pos += k
            view = view[k:]

    def put_zeros(self, n: int) -> None:
        # The block is reused, so padding must be written, not skipped over.
        while n:
            if self.pos == BATCH:
                self._flush_full()
            k = min(BATCH - self.pos, n)
            self.view[self.pos : self.pos + k] = _ZEROS[:k]
            self.pos += k
            n -= k

    def add(self, entry: WalkEntry) -> None:
        self.add_batched(entry)
        self.flush()

    def add_batched(self, entry: WalkEntry) -> None:
        if entry.kind is Kind.FILE:
            self.add_file(entry)
        else:
            start = self.offset + self.pos
            header = tarwrite.entry_header(entry)
            self.put(header)
            self.note(entry, 0, start, start + len(header))
        self.files += 1

    def note(self, entry: WalkEntry, size: int, header_at: int, data_at: int) -> None:
        """One entry for the index, as a reader of the tar stream will see it."""
        if self.index is None:
            return
        st = entry.st
        kind = _INDEX_KIND[entry.kind]
        # The headers store whole seconds, never before the epoch.
        mtime_ns = max(0, int(st.st_mtime)) * 1_000_000_000
        parent, _, name = entry.relpath.rpartition("/")
        self.index.add(
            parent.encode("utf-8", "surrogateescape"),
            name.encode("utf-8", "surrogateescape"),
            kind,
            size,
            stat.S_IMODE(st.st_mode),
            mtime_ns,
            entry.linkname.encode("utf-8", "surrogateescape"),
            header_at,
            data_at,
        )

    def add_file(self, entry: WalkEntry) -> None:
        try:
            fd = os.open(entry.name, _FILE_FLAGS, dir_fd=entry.dir_fd)
        except FileNotFoundError:
            self.files -= 1  # deleted since the listing: it is simply not part of this backup
            return
        except OSError as exc:
            raise_if_out_of_resources(exc)
            self.skip(entry.relpath, f"cannot open: {exc.strerror}")
            self.files -= 1
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                # Replaced by a FIFO or a device since the listing (O_NOFOLLOW refused links).
                self.skip_special(entry.relpath, "no longer a regular file")
                self.files -= 1
                return
            entry.st = st
            regions = holes.data_regions(fd, st.st_size) if holes.may_have_holes(st) else None
            if regions is None:
                self.copy_data(entry, fd, st.st_size)
            else:
                self.copy_sparse(entry, fd, st.st_size, regions)
        finally:
            os.close(fd)

    def copy_data(self, entry: WalkEntry, fd: int, size: int) -> None:
        """Write header and exactly ``size`` bytes of data, whatever the file does meanwhile."""
        start = self.offset + self.pos
        header = tarwrite.entry_header(entry, size)
        self.put(header)
        self.note(entry, size, start, start + len(header))
        self.copy_range(entry, fd, size, probe=True)
        self.put_zeros(-size % tarwrite.BLOCK)

    def copy_sparse(self, entry: WalkEntry, fd: int, size: int, regions: holes.Regions) -> None:
        """Write a pax sparse 1.0 entry: the map, then each data region read at its offset."""
        table = tarwrite.sparse_map(regions)
        stored = holes.stored_size(regions)
        start = self.offset + self.pos
        header = tarwrite.sparse_header(entry, len(table) + stored, size)
        self.put(header)
        self.note(entry, size, start, start + len(header))
        self.put(table)
        for offset, length in regions:
            if length:
                os.lseek(fd, offset, os.SEEK_SET)
                self.copy_range(entry, fd, length, probe=False)
        self.put_zeros(-stored % tarwrite.BLOCK)

    def copy_range(self, entry: WalkEntry, fd: int, size: int, *, probe: bool) -> None:
        """Copy exactly ``size`` bytes from the file position, zeros for what is no longer
        there; ``probe``: the range ends the file, so say if the file has grown past it."""
        view = self.view
        remaining = size
        extra = 1 if probe else 0
        while remaining or probe:
            pos = self.pos
            space = BATCH - pos
            if space == 0:
                self._flush_full()
                pos, space = 0, BATCH
            # Asking for one byte more than the header promises tells at no extra cost
            # whether the file has grown since it was measured; a byte read too many lands
            # where the padding or the next entry will overwrite it.
            want = remaining + extra if remaining < space else space
            n = os.readv(fd, [view[pos : pos + want]])
            if n > remaining:
                self.pos = pos + remaining
                self.bytes_read += remaining
                log.warning("archive_file_grew", path=entry.relpath, archived_bytes=size)
                break
            if n == 0:
                if remaining:
                    log.warning(
                        "archive_file_shrank",
                        path=entry.relpath,
                        archived_bytes=size - remaining,
                        zero_padded=remaining,
                    )
                    self.put_zeros(remaining)
                break
            self.pos = pos + n
            remaining -= n
            self.bytes_read += n
            if remaining == 0 and n < want:
                break  # a short read that ends exactly at the promised size: end of file


def write_archive(
    root: str | os.PathLike[str],
    sink: Sink,
    rules: IgnoreRules | None = None,
    *,
    level: str = BEST_SPEED,
    checksum: str = "sha1",
    write_limit: float = 0,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    threads: int | None = None,
    clock: Clock = time.monotonic,
    allow_unreadable: bool = False,
    on_read_end: Callable[[], None] | None = None,
    index: bool = False,
) -> ArchiveResult:
    """Stream a gzip tar archive of ``root`` into ``sink`` and say what was written.

    An entry that cannot be read (no access, an I/O error) raises :class:`UnreadableEntry`,
    unless ``allow_unreadable``: then it is left out, logged and counted in ``unreadable``.
    FIFOs, sockets and devices are always left out, and only counted in ``skipped``.

    ``write_limit`` is in MiB/s (0: unlimited). ``progress`` is called from this thread at most
    every 0.25 s of ``clock``, and once at the end; when given, the total is counted by a
    second walk alongside (:class:`TreeTotal`, stopped and joined before this returns).
    ``on_read_end`` is called once every file has been read, before the last of the archive
    is compressed and written (a game may save again from then on). ``index``: gather the
    archive's index as it is written (``ArchiveResult.index``; its caller closes it).
    Raises :class:`Cancelled` when ``cancel`` is set, or the sink's own error.
    """
    limiter = TokenBucket(write_limit * MIB, cancel) if write_limit > 0 else None
    metered = MeteredWriter(sink, checksum, limiter, cancel)
    bytes_total = [0]
    rules = rules or IgnoreRules()
    measure = TreeTotal(root, rules, bytes_total, cancel) if progress is not None else None
    gz = GZIP.open_writer(metered, level, threads)  # type: ignore[arg-type]
    archiver = _Archiver(gz, cancel, progress, bytes_total, clock, allow_unreadable, index)
    ok = False
    try:
        if measure is not None:
            measure.start()
        entries = walk(
            root,
            rules if measure is None else measure.writer_rules,
            archiver.skip,
            on_special=archiver.skip_special,
            on_excluded=None if measure is None else measure.exclude_file,
        )
        with contextlib.closing(entries):
            for entry in entries:
                archiver.check()
                archiver.add_batched(entry)
        if on_read_end is not None:
            on_read_end()
        archiver.flush()
        tarwrite.write_end(gz)
        ok = True
    finally:
        if measure is not None:
            measure.stop()
        if not ok and archiver.index is not None:
            archiver.index.close()
        if ok:
            gz.close()
        else:
            with contextlib.suppress(Exception):  # the first error is the one that matters
                gz.close()
    # The measuring thread may not have finished: the final report has the exact total.
    bytes_total[0] = archiver.bytes_read
    archiver.report()
    members = getattr(gz, "members", None)
    gathered = archiver.index
    if gathered is not None:
        if members is None:  # a writer without members: nothing to index by
            gathered.close()
            gathered = None
        else:
            gathered.members = list(members)
    return ArchiveResult(
        size=metered.size,
        checksum=metered.hexdigest(),
        checksum_type=checksum,
        files=archiver.files,
        skipped=archiver.skipped,
        unreadable=archiver.unreadable,
        bytes_read=archiver.bytes_read,
        index=gathered,
    )


def archive_to_file(
    root: str | os.PathLike[str],
    path: str | os.PathLike[str],
    rules: IgnoreRules | None = None,
    *,
    index: bool = False,
    **options: object,
) -> ArchiveResult:
    """Write the archive of ``root`` to ``path`` atomically, then its checksum sidecar, and
    with ``index`` its index (``<path>.index``, archive/index.py; an index that cannot be
    written is logged, not a failure: the first browse builds it).

    On any error or cancellation the temporary file is removed and ``path`` does not appear;
    if the sidecar cannot be written (a full disk), the archive is removed again, so a backup
    reported as failed never leaves an archive under its final name.
    """
    path = Path(path)
    cancel = options.get("cancel")
    result: ArchiveResult | None = None
    try:
        with AtomicFile(path) as f:
            result = write_archive(root, f, rules, index=index, **options)  # type: ignore[arg-type]
            f.commit(cancel if isinstance(cancel, threading.Event) else None)
        try:
            write_sidecar(path, result.checksum, result.checksum_type)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if result.index is not None:
            try:
                write_index_for_file(path, result.index)
            except Exception as exc:
                # The archive is complete without it: the first browse builds it again.
                log.warning("archive_index_not_written", archive=str(path), error=str(exc))
    finally:
        if result is not None and result.index is not None:
            result.index.close()  # written: its members stay readable, its spool is gone
    return result
