"""S3 backups the way a stock panel does them: through pre-signed part URLs.

The panel owns the bucket credentials and wants the archive's size before it opens the
multipart upload (it presigns ``ceil(size / part_size)`` part URLs), so this flow, unlike the
node-credential one in :mod:`wingsbak.storage.s3`, needs a temporary file. The file is
written in a worker thread, its parts are streamed from disk (a panel may use parts of several
GiB), each PUT is retried by reading its part from the file again, and the file is removed
whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import os
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from wingsbak.archive.archiver import ArchiveResult, write_archive
from wingsbak.archive.atomic import AtomicFile
from wingsbak.archive.codecs import GZIP, earlier_archive_name
from wingsbak.archive.rules import IgnoreRules
from wingsbak.log import get_logger
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.storage.base import (
    ArchiveStream,
    BackupSource,
    BackupStore,
    Download,
    Outcome,
    StoreContext,
    StoreError,
)

if TYPE_CHECKING:
    from wingsbak.panel import PanelClient

log = get_logger(__name__)

CONTENT_TYPE = GZIP.content_type
READ_CHUNK = 1024 * 1024
PUT_ATTEMPTS = 5
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 8.0
PUT_CONCURRENCY = 4
# No total limit: a multi-GiB part on a slow link may take long, as long as bytes move.
PUT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=120)

PartUrls = tuple[Sequence[str], int]
GetPartUrls = Callable[[int], Awaitable[PartUrls] | PartUrls]


class PresignedUploadError(StoreError):
    """The pre-signed upload failed for good; the message is one line for log and report."""


@dataclass(slots=True, frozen=True)
class PresignedUpload:
    archive: ArchiveResult
    # What the panel's report wants in ``parts``: [{"etag": '"..."', "part_number": 1}, ...]
    parts: list[dict[str, Any]]


class _Retryable(Exception):
    pass


async def upload_via_panel(
    root: str | os.PathLike[str],
    backup_uuid: str,
    get_part_urls: GetPartUrls,
    *,
    temp_dir: str | os.PathLike[str],
    rules: IgnoreRules | None = None,
    session: aiohttp.ClientSession | None = None,
    concurrency: int = PUT_CONCURRENCY,
    attempts: int = PUT_ATTEMPTS,
    backoff: float = BACKOFF_INITIAL,
    **archive_options: Any,
) -> PresignedUpload:
    """Archive ``root`` to a temporary file in ``temp_dir``, ask ``get_part_urls(size)`` for
    the part URLs and PUT the parts; returns the archive's result and the parts to report.

    ``get_part_urls`` may be a coroutine function or a plain one (run in a worker thread); it
    returns ``(urls, part_size)``. ``archive_options`` go to :func:`write_archive`. Raises
    :class:`PresignedUploadError`, the error of ``get_part_urls``, or the archive's own error
    (``Cancelled``...). The temporary file is gone when this returns or raises, also when the
    task is cancelled.
    """
    creating = asyncio.ensure_future(
        asyncio.to_thread(AtomicFile, Path(temp_dir) / earlier_archive_name(backup_uuid))
    )
    try:
        temp = await asyncio.shield(creating)
    except asyncio.CancelledError:  # the file may be made meanwhile: it goes too
        made = (await asyncio.gather(creating, return_exceptions=True))[0]
        if isinstance(made, AtomicFile):
            made.abort()
        raise
    try:
        result = await _archive_in_thread(root, temp, rules, archive_options)
        urls, part_size = await _call_get_part_urls(get_part_urls, result.size)
        check_part_plan(result.size, urls, part_size)
        parts = await put_parts(
            temp.tmp_path,
            result.size,
            urls,
            part_size,
            session=session,
            concurrency=concurrency,
            attempts=attempts,
            backoff=backoff,
        )
    finally:
        # Never committed: this removes the temporary file (off the loop: it may be GiBs).
        try:
            await asyncio.to_thread(temp.abort)
        except asyncio.CancelledError:
            temp.abort()  # idempotent; the file must go whatever happens
            raise
    return PresignedUpload(result, parts)


async def _archive_in_thread(
    root: str | os.PathLike[str],
    temp: AtomicFile,
    rules: IgnoreRules | None,
    options: dict[str, Any],
) -> ArchiveResult:
    cancel = options.pop("cancel", None) or threading.Event()
    job = asyncio.ensure_future(
        asyncio.to_thread(write_archive, root, temp, rules, cancel=cancel, **options)
    )
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        # The thread still writes into the temporary file's descriptor: it must have stopped
        # before the caller's cleanup closes that descriptor (or a reused number gets the rest).
        cancel.set()
        await asyncio.gather(job, return_exceptions=True)
        raise


async def _call_get_part_urls(get_part_urls: GetPartUrls, size: int) -> PartUrls:
    if inspect.iscoroutinefunction(get_part_urls) or inspect.iscoroutinefunction(
        getattr(get_part_urls, "__call__", None)  # noqa: B004 - an async __call__ counts too
    ):
        answer: Any = await get_part_urls(size)  # type: ignore[misc]
    else:
        answer = await asyncio.to_thread(get_part_urls, size)
        if inspect.isawaitable(answer):
            answer = await answer
    urls, part_size = answer
    return list(urls), int(part_size)


def check_part_plan(size: int, urls: Sequence[str], part_size: int) -> None:
    if part_size <= 0:
        raise PresignedUploadError(f"the panel sent an invalid part size ({part_size})")
    expected = max(1, math.ceil(size / part_size))
    if len(urls) != expected:
        raise PresignedUploadError(
            f"the panel sent {len(urls)} part URLs for a {size}-byte archive in "
            f"{part_size}-byte parts; expected {expected}"
        )


def _host(url: str) -> str:
    # Part URLs carry a signature in their query: only the host may reach a log line.
    return urlsplit(url).netloc


async def put_parts(
    path: str | os.PathLike[str],
    size: int,
    urls: Sequence[str],
    part_size: int,
    *,
    session: aiohttp.ClientSession | None = None,
    concurrency: int = PUT_CONCURRENCY,
    attempts: int = PUT_ATTEMPTS,
    backoff: float = BACKOFF_INITIAL,
) -> list[dict[str, Any]]:
    """PUT the ``part_size`` slices of the file at ``path`` to ``urls`` (in order) and return
    ``[{"etag", "part_number"}]``. On the first part that fails for good the others are
    cancelled and :class:`PresignedUploadError` is raised."""
    check_part_plan(size, urls, part_size)
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(timeout=PUT_TIMEOUT)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int, url: str) -> dict[str, Any]:
        offset = index * part_size
        length = min(part_size, size - offset)
        async with slots:
            etag = await _put_with_retries(
                session, url, fd, offset, length, index + 1, attempts, backoff
            )
        return {"etag": etag, "part_number": index + 1}

    tasks = [asyncio.create_task(one(i, u)) for i, u in enumerate(urls)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        os.close(fd)
        if own_session:
            await session.close()


async def _read_part(fd: int, offset: int, length: int) -> AsyncIterator[bytes]:
    end = offset + length
    while offset < end:
        chunk = await asyncio.to_thread(os.pread, fd, min(READ_CHUNK, end - offset), offset)
        if not chunk:
            raise PresignedUploadError("the temporary archive is shorter than its recorded size")
        offset += len(chunk)
        yield chunk


async def _put_with_retries(
    session: aiohttp.ClientSession,
    url: str,
    fd: int,
    offset: int,
    length: int,
    number: int,
    attempts: int,
    backoff: float,
) -> str:
    for attempt in range(1, attempts + 1):
        try:
            return await _put_once(session, url, fd, offset, length, number)
        except (TimeoutError, _Retryable, aiohttp.ClientError) as exc:
            reason = str(exc) or type(exc).__name__
            if attempt == attempts:
                raise PresignedUploadError(
                    f"part {number} could not be uploaded to {_host(url)} after {attempts} "
                    f"attempts: {reason}"
                ) from exc
            delay = min(BACKOFF_MAX, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning(
                "presigned_part_retry",
                part=number,
                host=_host(url),
                attempt=attempt,
                error=reason,
                delay=round(delay, 2),
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


async def _put_once(
    session: aiohttp.ClientSession, url: str, fd: int, offset: int, length: int, number: int
) -> str:
    headers = {"Content-Type": CONTENT_TYPE, "Content-Length": str(length)}
    # encoded=True: the signature is already percent-encoded; re-quoting it would break it.
    async with session.put(
        URL(url, encoded=True), data=_read_part(fd, offset, length), headers=headers
    ) as resp:
        if resp.status >= 500 or resp.status == 429:
            raise _Retryable(f"HTTP {resp.status}")
        body = await resp.read()
        if resp.status >= 300:
            raise PresignedUploadError(
                f"part {number}: {_host(url)} refused the upload with HTTP {resp.status}"
                f"{_s3_code(body)}"
            )
        etag = resp.headers.get("ETag")
        if not etag:
            raise PresignedUploadError(f"part {number}: {_host(url)} answered without an ETag")
        return etag


def _s3_code(body: bytes) -> str:
    # S3 explains a refusal in <Code>...</Code>; that word (e.g. AccessDenied, an expired
    # signature) is what an operator needs, the rest of the XML is noise.
    text = body[:2000].decode("utf-8", "replace")
    start = text.find("<Code>")
    end = text.find("</Code>")
    if start < 0 or end < start:
        return ""
    return f" ({text[start + 6 : end][:100]})"


class PresignedStore(BackupStore):
    """The panel's bucket (the panel's ``s3`` adapter): the node uploads through pre-signed
    part URLs and reports the parts; downloads, restores and deletes go through the panel,
    so the node itself holds nothing (a restore reads the ``download_url`` it is given)."""

    name = "presigned"
    selectable = False  # the panel's ``s3`` adapter, never system.backups.store

    def __init__(
        self,
        panel: PanelClient,
        local: BackupDirectory,
        *,
        backoff: float,
        on_uploaded: Callable[[int], None] | None = None,
    ) -> None:
        self.panel = panel
        self.local = local
        self.backoff = backoff
        self.on_uploaded = on_uploaded

    @classmethod
    def from_config(cls, ctx: StoreContext) -> PresignedStore:
        """Always there: the panel's ``s3`` adapter may be chosen on any node."""
        backoff = ctx.config.system.backups.report_retry_initial
        return cls(ctx.panel, ctx.directory, backoff=backoff, on_uploaded=ctx.on_uploaded)

    async def create(self, source: BackupSource) -> Outcome:
        if not self.panel.configured:
            raise PresignedUploadError("the s3 adapter needs a panel to presign the parts")
        rules = await asyncio.to_thread(IgnoreRules.for_server, source.root, source.ignore)
        await asyncio.to_thread(self.local.ensure_server_dir, source.server)
        upload = await upload_via_panel(
            source.root,
            source.backup,
            # The panel's own backoff (system.backups.report_retry_initial): 1 s, then
            # 2, 4, 8 and 16 s by default.
            functools.partial(self.panel.get_part_urls, source.backup, backoff=self.backoff),
            temp_dir=self.local.server_dir(source.server),
            rules=rules,
            # Not the panel's session: its 30 s total timeout would cut off big part PUTs.
            **source.options.engine_arguments(),
        )
        if self.on_uploaded is not None:
            self.on_uploaded(upload.archive.size)
        a = upload.archive
        return Outcome(
            True, a.checksum, a.checksum_type, a.size, parts=upload.parts, skipped=a.unreadable
        )

    def exists(self, server: str, backup: str) -> bool:
        return False

    def open_download(self, server: str, backup: str) -> Download | None:
        return None  # the panel hands out its own bucket's links

    def open_restore(
        self, server: str, backup: str
    ) -> contextlib.AbstractContextManager[ArchiveStream] | None:
        # A restore from the panel's bucket reads the link the panel sends with it, which
        # the job manager opens before answering 202 (as Wings does); nothing is kept here.
        return None

    def delete(self, server: str, backup: str) -> bool:
        return False

    def recover(
        self, server: str, backup: str, entry: Mapping[str, Any] | None = None
    ) -> Outcome | None:
        removed = self.local.remove_temporaries(server, backup) if server else 0
        if removed:
            log.info("interrupted_backup_temporaries_removed", backup=backup, removed=removed)
        return None
