"""Failures nobody misses: each server's last successful and last failed backup (metrics
kept across restarts), a notification for every failed backup or restore and every backup
that fails its check, and the free space of the backup directory's file system.

The job manager calls :meth:`Watch.job_end` once per finished job; the verification
schedule calls :meth:`Watch.corrupt`. Nothing here can fail a job: its own errors are logged.

The per-server times live in ``<backup_directory>/.wingsbak-backup-times.json`` and are
loaded at start, so that Prometheus sees the same values before and after a restart: "no
successful backup in 26 h" neither fires because the daemon restarted (it did not lose the
last success) nor goes quiet (the series does not vanish). A server whose directory under
``system.data`` is gone (deleted in the panel) is dropped, so its alert does not fire forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wingsbak.config import Config
from wingsbak.log import get_logger
from wingsbak.metrics import Metrics
from wingsbak.notify import BACKUP_CORRUPT, BACKUP_FAILED, RESTORE_FAILED, message
from wingsbak.panel import NOTIFY, Outbox
from wingsbak.statefile import write_json_atomic

log = get_logger(__name__)

TIMES_NAME = ".wingsbak-backup-times.json"
INTERRUPTED = "the daemon stopped while it ran"
# How often the backup directory's free space is read, and gone servers are forgotten.
REFRESH_SECONDS = 30.0


@dataclass(slots=True, frozen=True)
class JobEnd:
    kind: str  # "backup" or "restore"
    server: str
    backup: str
    successful: bool
    error: str = ""  # why it failed, one line
    store: str = ""


JobEndHook = Callable[[JobEnd], Awaitable[None]]


async def ignore_job_end(_end: JobEnd) -> None:
    """The job manager's hook until the daemon sets one."""


class Watch:
    def __init__(self, config: Config, metrics: Metrics, outbox: Outbox) -> None:
        self.config = config
        self.metrics = metrics
        self.outbox = outbox
        self.path = config.backup_dir / TIMES_NAME
        self._times: dict[str, dict[str, float]] = {}  # server -> {"success"/"failure": t}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        loaded = await asyncio.to_thread(self._load)
        self._times = loaded
        for server, times in loaded.items():
            self._show(server, times)
        await self._refresh_logged()  # before the first scrape can come
        self._task = asyncio.create_task(self._refresh_forever(), name="wingsbak-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- jobs ----------------------------------------------------------------------------

    async def job_end(self, end: JobEnd) -> None:
        try:
            if end.kind == "backup" and end.server:
                times = self._times.setdefault(end.server, {})
                times["success" if end.successful else "failure"] = time.time()
                self._show(end.server, times)
                await self._save()
            if not end.successful:
                event = BACKUP_FAILED if end.kind == "backup" else RESTORE_FAILED
                await self.notify(event, end.server, end.backup, end.store, end.error)
        except Exception as exc:  # never the job's failure
            log.error("watch_failed", backup=end.backup, error=str(exc), exc_info=True)

    async def corrupt(self, server: str, backup: str, store: str, reason: str) -> None:
        """A backup newly found corrupt (the caller has logged it): counted and announced."""
        self.metrics.corrupt_found.labels(store).inc()
        try:
            await self.notify(BACKUP_CORRUPT, server, backup, store, reason)
        except Exception as exc:
            log.error("watch_failed", backup=backup, error=str(exc), exc_info=True)

    async def notify(self, event: str, server: str, backup: str, store: str, error: str) -> None:
        if not self.config.system.backups.notify_url:
            return
        body = message(
            event, server=server, backup=backup, store=store, error=error, node=self.config.uuid
        )
        await self.outbox.send("POST", "", body, target=NOTIFY)

    # -- the per-server times --------------------------------------------------------------

    def _show(self, server: str, times: dict[str, float]) -> None:
        if "success" in times:
            self.metrics.last_success.labels(server).set(times["success"])
        if "failure" in times:
            self.metrics.last_failure.labels(server).set(times["failure"])

    def _load(self) -> dict[str, dict[str, float]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("backup_times_unreadable", path=str(self.path), error=str(exc))
            return {}
        out: dict[str, dict[str, float]] = {}
        if isinstance(raw, dict):
            for server, times in raw.items():
                if isinstance(times, dict):
                    kept = {
                        k: float(v)
                        for k, v in times.items()
                        if k in ("success", "failure") and isinstance(v, int | float)
                    }
                    out[str(server)] = kept
        return out

    async def _save(self) -> None:
        async with self._lock:
            snapshot: dict[str, Any] = {s: dict(t) for s, t in self._times.items()}
            try:
                await asyncio.to_thread(write_json_atomic, self.path, snapshot)
            except OSError as exc:  # costs the times across a restart, nothing else
                log.error("backup_times_not_saved", error=exc.strerror or str(exc))

    # -- periodic: free space, servers gone ------------------------------------------------

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            await self._refresh()
        except Exception as exc:
            log.warning("watch_refresh_failed", error=str(exc))

    async def _refresh(self) -> None:
        data = self.config.data_dir
        servers = list(self._times)
        free, size, gone = await asyncio.to_thread(
            _survey, self.config.backup_dir, data, servers
        )
        self.metrics.backup_dir_free.set(free)
        self.metrics.backup_dir_size.set(size)
        if gone:
            for server in gone:
                self._times.pop(server, None)
                for gauge in (self.metrics.last_success, self.metrics.last_failure):
                    with contextlib.suppress(KeyError):
                        gauge.remove(server)
            log.info("backup_times_forgotten", servers=gone, reason="server directory gone")
            await self._save()


def _survey(backups: Path, data: Path, servers: list[str]) -> tuple[int, int, list[str]]:
    st = os.statvfs(backups)
    # A data directory that is not there at all (not mounted yet) says nothing of servers.
    gone = [s for s in servers if not (data / s).is_dir()] if data.is_dir() else []
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, gone
