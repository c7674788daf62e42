"""Restore jobs: one per server, the download link opened before the answer, the archive
streamed into the server's files on a thread of their own, the console told as it goes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from typing import Any

from wingsbak.archive import Cancelled
from wingsbak.archive.extract import RestoreError, RestoreProgress, RestoreResult, extract_archive
from wingsbak.archive.staging import staging_left
from wingsbak.download_source import (
    DownloadError,
    GuardedStream,
    HTTPArchiveStream,
    SourceUnreachable,
    open_restore_stream,
)
from wingsbak.errors import BadGateway, BadRequest, Conflict, NotFound, Unavailable, describe
from wingsbak.events import BACKUP_RESTORE_COMPLETED, DAEMON_MESSAGE
from wingsbak.formats import S3_ADAPTER
from wingsbak.jobbase import JobBase, RestoreJob, log_unfinished
from wingsbak.log import get_logger
from wingsbak.reports import restore_path, restore_report
from wingsbak.urlguard import UnsafeURL
from wingsbak.watch import JobEnd

log = get_logger(__name__)

# A restore's download link is opened before the 202 (the panel's pre-signed GET lasts 5
# minutes): the panel waits about 15 s for that answer (its Guzzle timeout).
RESTORE_OPEN_TIMEOUT = 10.0


class RestoreJobs(JobBase):
    async def submit_restore(
        self, server: str, backup_uuid: str, adapter: str, truncate: bool, download_url: str
    ) -> RestoreJob:
        if not self.accepting:
            raise Unavailable("the daemon is shutting down")
        if server in self.restores:
            raise Conflict("the server is already being restored")
        if any(j.server == server for j in self.backups.values()):
            raise Conflict("a backup of this server is running or queued")
        if server in self.path_restores:
            raise Conflict("files of the server are being restored from a backup")
        job = RestoreJob(server, backup_uuid, adapter, truncate, download_url)
        if download_url:
            job.source = await self._open_download_url(download_url)
        else:
            # The panel's s3 adapter without a link: a backup the node wrote to its own
            # bucket under an earlier version, found where it is like any other.
            job.store = await asyncio.to_thread(self.stores.locate, server, backup_uuid)
            if job.store is None and not self.stores.may_hold(adapter):
                raise BadRequest("The 'download_url' field is required for the s3 adapter.")
            if job.store is None:
                raise NotFound("The requested backup does not exist on this node.")
        # Other requests (or the start of a shutdown) may have come while we looked.
        busy = (
            server in self.restores
            or server in self.path_restores
            or any(j.server == server for j in self.backups.values())
        )
        if busy or not self.accepting:
            if job.source is not None:
                await asyncio.to_thread(job.source.close)
            if not self.accepting:
                raise Unavailable("the daemon is shutting down")
            raise Conflict("the server is busy with another backup or restore")
        self.restores[server] = job
        job.task = asyncio.create_task(self._run_restore(job), name=f"restore-{backup_uuid}")
        log.info("restore_queued", server=server, backup=backup_uuid, adapter=adapter)
        return job

    async def _open_download_url(self, url: str) -> HTTPArchiveStream:
        """Open the panel's link before answering, as Wings does: a link that is refused or
        unreachable is the panel's error to show, not a failed restore reported later."""
        allow = self.restore_allowlist()
        try:
            return await asyncio.to_thread(
                functools.partial(
                    open_restore_stream,
                    url,
                    allow,
                    timeout=self.config.system.backups.restore_idle_timeout,
                    open_timeout=RESTORE_OPEN_TIMEOUT,
                )
            )
        except UnsafeURL as exc:
            raise BadRequest(f"The download_url is refused: {exc}.") from exc
        except SourceUnreachable as exc:
            raise BadGateway(f"The backup's download link could not be reached: {exc}.") from exc
        except DownloadError as exc:
            raise BadRequest(f"The backup's download link gave no archive: {exc}.") from exc

    async def _run_restore(self, job: RestoreJob) -> None:
        ok = False
        error = ""
        loop = asyncio.get_running_loop()
        await self._journal_accepted(job.uuid, kind="restore", server=job.server)  # see backups
        try:
            # The server's lock only: a backup of this server was refused by submit_restore,
            # and backups of other servers do not hold up a restore.
            async with self._server_lock(job.server):
                if job.cancel.is_set():
                    raise Cancelled("cancelled before it started")
                if self.stop_server is not None:  # a live node: Wings stops the server first
                    timeout = self.config.system.backups.restore_stop_timeout
                    await self.stop_server(job.server, timeout)
                job.started = True
                log.info("restore_started", server=job.server, backup=job.uuid)
                result = await loop.run_in_executor(
                    self._restore_executor, self._restore_sync, job, loop
                )
                ok = True
                log.info(
                    "restore_completed",
                    server=job.server,
                    backup=job.uuid,
                    files=result.files,
                    skipped=result.skipped,
                )
        except (asyncio.CancelledError, Exception) as exc:
            log_unfinished("restore", job, exc)
            error = describe(exc)
        finally:
            # Cut off at shutdown while its thread deletes the old files: it succeeded.
            ok = ok or job.committed
            if job.source is not None:  # not read (cancelled before it started): let it go
                await asyncio.to_thread(job.source.close)
            self.restores.pop(job.server, None)
            self.finishing[job.uuid] = job.task
            self.metrics.restores.labels("true" if ok else "false").inc()
            # Its thread is done with the console lines (or never started).
            self._console(job.server, [*job.console.flush(), _restore_ended(job, ok)])
            self.events.publish(
                job.server, BACKUP_RESTORE_COMPLETED, {"uuid": job.uuid, "is_successful": ok}
            )
            await self.outbox.send("POST", restore_path(job.uuid), restore_report(ok))
            await self.on_job_end(JobEnd("restore", job.server, job.uuid, ok, error))
            root = self.server_root(job.server)
            if await asyncio.to_thread(staging_left, root, job.uuid):
                # Its staging could not be finished (it holds the old entries, or the old
                # tree to delete): the entry stays, so that the next start finishes it.
                log.error("restore_staging_left", server=job.server, backup=job.uuid)
                await self._journal_accepted(job.uuid, reported=True)
            else:
                await asyncio.to_thread(self.journal.forget, job.uuid)
            self.finishing.pop(job.uuid, None)

    def restore_allowlist(self) -> list[str]:
        """The configured allowlist, plus the hosts the node's stores trust (the node's own
        S3 endpoint: an operator who configured a private MinIO has said the node may)."""
        return [*self.config.system.backups.restore_host_allowlist, *self.stores.trusted_hosts()]

    def _restore_sync(self, job: RestoreJob, loop: asyncio.AbstractEventLoop) -> RestoreResult:
        """Worker thread: stream the archive into the server directory through the guard."""
        user = self.config.system.user
        b = self.config.system.backups
        options: dict[str, Any] = {
            "truncate": job.truncate,
            "write_limit": b.write_limit,
            "cancel": job.cancel,
            "owner": (user.uid, user.gid) if os.geteuid() == 0 else None,
            "label": job.uuid,  # names the staging directory that recovery looks for
            "on_commit": functools.partial(self._restore_committed, job),
            "progress": functools.partial(self._restore_progress, job, loop, [0]),
        }
        # A cancel or the deadline ends a read in progress, however slowly the source sends.
        guarded = functools.partial(GuardedStream, cancel=job.cancel, deadline=b.restore_deadline)
        dest = self.server_root(job.server)
        if job.source is not None:
            source = job.source
            # The packed size is a floor of the unpacked one, for the space check.
            size = source.size
            with contextlib.closing(guarded(source, source.abort)) as stream:
                return extract_archive(
                    stream, dest, bytes_total=size, expected_size=size, **options
                )
        assert job.store is not None
        opened = job.store.open_restore(job.server, job.uuid)
        if opened is None:
            raise RestoreError("the backup is no longer on this node; nothing restored")
        with opened as archive:
            if archive.size:
                options["bytes_total"] = archive.size
            with contextlib.closing(guarded(archive.stream, archive.abort)) as stream:
                return extract_archive(stream, dest, codec=archive.codec, **options)

    def _restore_progress(
        self,
        job: RestoreJob,
        loop: asyncio.AbstractEventLoop,
        reported: list[int],
        p: RestoreProgress,
    ) -> None:
        """Worker thread: the files restored since the last report, as console lines handed
        to the event loop in one batch (``reported``: the files counted so far)."""
        lines = job.console.take(p.names, p.files_written - reported[0])
        reported[0] = p.files_written
        if lines:
            with contextlib.suppress(RuntimeError):  # loop closed while stopping
                loop.call_soon_threadsafe(self._console, job.server, lines)

    def _console(self, server: str, lines: list[str]) -> None:
        for line in lines:
            self.events.publish(server, DAEMON_MESSAGE, line)

    def _restore_committed(self, job: RestoreJob) -> None:
        """Worker thread: the restored tree is in place. A crash from here on is a restore
        that succeeded (the staging's own mark says so too, in case this is not saved)."""
        job.committed = True
        try:
            self.journal.record(job.uuid, committed=True)
        except OSError as exc:
            log.error("journal_not_saved", job=job.uuid, error=describe(exc))



def _restore_ended(job: RestoreJob, ok: bool) -> str:
    """The console's last line of a restore: Wings' text (router/router_server_backup.go),
    which it prints whatever the outcome; a failure is said as one here."""
    source = "S3" if job.adapter == S3_ADAPTER else "local"
    if ok:
        return f"Completed server restoration from {source} backup."
    return f"Server restoration from {source} backup failed."
