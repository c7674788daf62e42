"""Backup jobs: limits, lifecycle, events and the report to the panel.

One backup at a time per server (a second waits in line), at most ``max_concurrent`` across
the node. The archive work runs in worker threads; this module only coordinates. Restores
are :mod:`wingsbak.restores`, the start after a crash :mod:`wingsbak.recovery`; what both
kinds share is :mod:`wingsbak.jobbase`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

from wingsbak import failpoint
from wingsbak.archive import ArchiveProgress, Cancelled
from wingsbak.archive.options import ArchiveOptions
from wingsbak.errors import Conflict, Unavailable, describe
from wingsbak.events import BACKUP_COMPLETED, BACKUP_PROGRESS
from wingsbak.formats import ADAPTERS
from wingsbak.jobbase import BackupJob, JobBase, Pauses, RestoreJob, StopServer, log_unfinished
from wingsbak.log import get_logger
from wingsbak.recovery import Recovery
from wingsbak.reports import backup_path, backup_report
from wingsbak.restores import RestoreJobs
from wingsbak.storage.base import BackupSource, Outcome
from wingsbak.watch import JobEnd

log = get_logger(__name__)

# How long cancelled jobs get to clean up at shutdown before their tasks are cancelled.
CANCEL_WAIT_SECONDS = 10.0
# How long the duplicate check waits for each store before the 202 (the same answer budget).
DUPLICATE_CHECK_TIMEOUT = 10.0
__all__ = [
    "ADAPTERS",
    "BackupJob",
    "JobBase",
    "JobManager",
    "Outcome",
    "Pauses",
    "RestoreJob",
    "StopServer",
]


class JobManager(RestoreJobs, Recovery):
    """Backups here; restores (:class:`RestoreJobs`) and the start after a crash
    (:class:`Recovery`) in their own modules, on the state of :class:`JobBase`."""

    # -- state -----------------------------------------------------------------------------

    def is_accepting(self) -> bool:
        return self.accepting

    def is_idle(self) -> bool:
        """No backup running and no restore: the verify schedule reads archives meanwhile."""
        return not self.running() and not self.restores

    def is_writing(self, backup: str) -> bool:
        """The backup is queued or being written."""
        return backup in self.backups

    def is_backing_up(self, server: str) -> bool:
        """A backup of the server is queued or running."""
        return any(j.server == server for j in self.backups.values())

    def is_restoring(self, server: str) -> bool:
        """A restore writes into the server's files (Wings' routes hold what would start it)."""
        return server in self.restores

    def state(self) -> dict[str, Any]:
        return {
            "accepting": self.accepting,
            "max_concurrent": self.config.system.backups.max_concurrent,
            "running": [j.summary() for j in self.running()],
            "queued": [j.summary() for j in self.queued()],
            "restoring": [j.summary() for j in self.restores.values()],
            "finishing": sorted(self.finishing),
            "completed": self.completed,
            "failed": self.failed,
            "outbox": len(self.outbox),
        }

    # -- backups ---------------------------------------------------------------------------

    async def submit_backup(
        self, server: str, backup_uuid: str, adapter: str, ignore: str
    ) -> BackupJob:
        if not self.accepting:
            raise Unavailable("the daemon is shutting down")
        if backup_uuid in self.backups:
            raise Conflict("a backup with this uuid is already running or queued")
        if server in self.restores:
            raise Conflict("the server is being restored")
        # Every store the node has, as a backup can be in any of them (restic: a second
        # snapshot under the same uuid would survive the backup's delete).
        holder = await self.stores.holding(server, backup_uuid, DUPLICATE_CHECK_TIMEOUT)
        if holder is not None:
            raise Conflict("a backup with this uuid already exists on this node")
        # Other requests may have come in while we looked.
        if backup_uuid in self.backups:
            raise Conflict("a backup with this uuid is already running or queued")
        if server in self.restores:
            raise Conflict("the server is being restored")
        store = self.stores.for_adapter(adapter)
        job = BackupJob(server, backup_uuid, adapter, ignore, store=store.name)
        self.backups[backup_uuid] = job
        job.task = asyncio.create_task(self._run_backup(job), name=f"backup-{backup_uuid}")
        log.info(
            "backup_queued", server=server, backup=backup_uuid, adapter=adapter, store=store.name
        )
        return job

    async def _run_backup(self, job: BackupJob) -> None:
        outcome = Outcome(successful=False, checksum_type=self.config.system.backups.checksum)
        error = ""
        # Journaled as soon as it is accepted (after the 202 is on its way, so that the answer
        # never waits for an fsync): a job still queued when the daemon dies is reported too.
        await self._journal_accepted(
            job.uuid, kind="backup", server=job.server, adapter=job.adapter, store=job.store
        )
        try:
            await self.space.check(job.server, job.uuid, job.ignore, job.store, job.notes)
            async with self._server_lock(job.server), self._slots:
                if job.cancel.is_set():
                    raise Cancelled("cancelled before it started")
                job.state = "running"
                self.metrics.backups_started.labels(job.adapter).inc()
                log.info("backup_started", server=job.server, backup=job.uuid, adapter=job.adapter)
                started = time.monotonic()
                store = self.stores.for_adapter(job.adapter)
                loop = asyncio.get_running_loop()
                source = BackupSource(
                    job.server,
                    job.uuid,
                    self.server_root(job.server),
                    job.ignore,
                    self.archive_options(job, loop),
                    self._executor,
                    note=functools.partial(self.journal.record, job.uuid),
                )
                async with self.quiesce.around(source, store.name, job.notes) as paused:
                    outcome = await store.create(paused.source)
                self.metrics.archive_duration.observe(time.monotonic() - started)
                self.metrics.archived_bytes.inc(outcome.size)
                self.metrics.skipped_entries.inc(outcome.skipped)
                log.info(
                    "backup_completed",
                    server=job.server,
                    backup=job.uuid,
                    size=outcome.size,
                    checksum=outcome.checksum,
                    skipped=outcome.skipped,
                    seconds=round(time.monotonic() - started, 3),
                    **job.notes,
                )
        except (asyncio.CancelledError, Exception) as exc:
            log_unfinished("backup", job, exc)
            error = describe(exc)
        finally:
            self.backups.pop(job.uuid, None)
            self.finishing[job.uuid] = job.task
            if outcome.successful:
                self.completed += 1
                self.metrics.backups_succeeded.labels(job.adapter).inc()
            else:
                self.failed += 1
                self.metrics.backups_failed.labels(job.adapter).inc()
                outcome = Outcome(successful=False, checksum_type=outcome.checksum_type)
            await self._report_backup(job, outcome)
            await failpoint.reached("backup-reported")
            end = JobEnd("backup", job.server, job.uuid, outcome.successful, error, job.store)
            await self.on_job_end(end)
            # Only once the report is safe in the outbox: a crash in between must leave a
            # trace that recovery turns into a report.
            await asyncio.to_thread(self.journal.forget, job.uuid)
            self.finishing.pop(job.uuid, None)

    async def _report_backup(self, job: BackupJob, outcome: Outcome) -> None:
        completed = {
            "uuid": job.uuid,
            "is_successful": outcome.successful,
            "checksum": outcome.checksum,
            "checksum_type": outcome.checksum_type,
            "file_size": outcome.size,
            **job.notes,  # wingsbak's: saving paused, may be inconsistent, refused for space
        }
        if outcome.skipped:  # only with allow_skipped: wingsbak's addition to Wings' payload
            completed["skipped"] = outcome.skipped
        # Wings publishes "backup completed:<uuid>", but its event bus (events/events.go
        # Publish) strips the ":<uuid>": clients only ever receive the bare name. The stock
        # Pterodactyl frontend reads the per-uuid name as a success whatever its payload says
        # (BackupRow.tsx, `is_successful || true`), so it is never sent.
        self.events.publish(job.server, BACKUP_COMPLETED, completed)
        await self.outbox.send("POST", backup_path(job.uuid), backup_report(outcome))

    def _progress_callback(self, job: BackupJob, loop: asyncio.AbstractEventLoop) -> Any:
        def progress(p: ArchiveProgress) -> None:
            job.progress = p
            payload = {
                "uuid": job.uuid,
                "bytes_read": p.bytes_read,
                "bytes_total": p.bytes_total,
                "files": p.files,
                "percent": round(p.percent, 1),
            }
            with contextlib.suppress(RuntimeError):  # loop closed while stopping
                loop.call_soon_threadsafe(self.events.publish, job.server, BACKUP_PROGRESS, payload)

        return progress

    def archive_options(self, job: BackupJob, loop: asyncio.AbstractEventLoop) -> ArchiveOptions:
        b = self.config.system.backups
        return ArchiveOptions(
            level=b.compression_level,
            checksum=b.checksum,
            write_limit=b.write_limit,
            progress=self._progress_callback(job, loop),
            cancel=job.cancel,
            allow_unreadable=b.allow_skipped,
        )

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let running jobs finish within ``grace`` seconds, cancel the rest
        (their temporary files are removed and the panel is told they failed)."""
        self.accepting = False
        grace = self.config.system.backups.shutdown_grace if grace is None else grace
        for job in self.queued():
            job.cancel.set()
        for restore in self.restores.values():
            # A restore still waiting must not start now, only to be cut off half-way.
            if not restore.started:
                restore.cancel.set()
        jobs: list[BackupJob | RestoreJob] = [*self.backups.values(), *self.restores.values()]
        tasks = [j.task for j in jobs if j.task is not None]
        tasks += [t for t in self.finishing.values() if t is not None and t not in tasks]
        if tasks:
            log.info("shutdown_waiting_for_jobs", jobs=len(tasks), grace=grace)
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                for job in jobs:
                    job.cancel.set()
                _done, pending = await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)
            for task in pending:  # e.g. a part PUT that does not look at the cancel event
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)

        # The job threads (and the compressor and counting threads each joins before it
        # returns) must be gone before the interpreter is: one still inside native code
        # when it finalizes aborts the process.
        def join_all() -> None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._restore_executor.shutdown(wait=True, cancel_futures=True)

        self.stores.stop()
        try:
            await asyncio.wait_for(asyncio.to_thread(join_all), CANCEL_WAIT_SECONDS)
        except TimeoutError:  # e.g. a part PUT: the interpreter still joins it at exit
            log.warning("shutdown_job_threads_still_running")
