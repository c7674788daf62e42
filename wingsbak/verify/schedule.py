"""The daemon's verification schedule (``system.backups.verify_interval``).

Every local and node-bucket archive is read whole once per interval, whatever its size and
file times, at ``verify_read_limit`` MiB/s, on one low-priority thread, one archive at a
time, and only while no backup or restore runs (a local archive pauses mid-file when one
starts). A restic repository is checked with ``restic check --read-data-subset n/t``, one
slice per interval, the slices chosen so that the whole repository is read within a week;
the check runs on the restic store's maintenance thread, as prunes do: only once no restic
job uses the repository, new ones waiting for it (its lock is exclusive).

When each item was last checked is kept in ``<backup_directory>/.wingsbak-verify.json``, so a
restart neither checks everything again at once nor forgets to. A backup found corrupt is
logged (``backup_corrupt``) at every check; counted and announced once, when first found;
never deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from wingsbak.archive.ratelimit import Cancelled
from wingsbak.archive.verify import ArchiveCorrupt, ArchiveGone, SourceError, VerifyResult
from wingsbak.config import Config
from wingsbak.jobs import JobManager
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic
from wingsbak.storage.bucket import S3Error
from wingsbak.storage.restic import ResticError, ResticStore
from wingsbak.storage.s3 import NodeBucketStore
from wingsbak.storage.select import Stores
from wingsbak.verify.stored import (
    ResticChecker,
    ResticFinding,
    StoredBackup,
    check_local,
    check_s3,
    local_backups,
    s3_backups,
)
from wingsbak.watch import Watch

log = get_logger(__name__)
T = TypeVar("T")

STATE_NAME = ".wingsbak-verify.json"
WEEK = 7 * 86400.0
MAX_SLICES = 256  # restic's bound on t in --read-data-subset n/t
# A check that could not run (an unreachable bucket, a locked repository) is tried again
# after this long, or after one interval if that is shorter.
RETRY_AFTER = 3600.0
QUIET_POLL = 0.5
MIN_SLEEP = 0.2
NICE = 10
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}
_IOPRIO_BEST_EFFORT_LOWEST = (2 << 13) | 7
_libc: Any = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(None, use_errno=True)
_lowered = threading.local()


def lower_priority() -> None:
    """The calling thread (and the processes it starts) at a lower CPU priority and the
    lowest best-effort I/O priority, so backups and the game servers go first."""
    if getattr(_lowered, "done", False):
        return
    _lowered.done = True
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICE)
    number = _IOPRIO_SET.get(platform.machine())
    if _libc is not None and number is not None:
        _libc.syscall(number, 1, 0, _IOPRIO_BEST_EFFORT_LOWEST)  # this thread; best effort


def slices(interval: float) -> int:
    """How many restic slices a week of intervals needs (1 to 256)."""
    return max(1, min(MAX_SLICES, math.ceil(WEEK / interval)))


async def _on_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a thread of its own that never holds up the daemon's exit: a bucket
    that answers a listing at a byte a second must not keep a stopping daemon alive (the
    listing is no read that can be cut from outside)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="wingsbak-verify-list", daemon=True).start()
    return await done


class VerifyState:
    """When each item was last checked, kept in a file (wall-clock times: they outlive the
    process). ``archives`` is keyed by ``StoredBackup.key`` (and ``restic:<backup>`` for
    backups a restic check found damaged)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.archives: dict[str, dict[str, Any]] = {}
        self.restic: dict[str, Any] = {}

    def load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("verify_state_unreadable", path=str(self.path), error=str(exc))
            return
        if isinstance(raw, dict):
            archives = raw.get("archives")
            restic = raw.get("restic")
            if isinstance(archives, dict):
                self.archives = {k: v for k, v in archives.items() if isinstance(v, dict)}
            if isinstance(restic, dict):
                self.restic = restic

    def save(self) -> None:
        try:
            write_json_atomic(self.path, {"archives": self.archives, "restic": self.restic})
        except OSError as exc:  # costs a check or two again after a restart
            log.error("verify_state_not_saved", error=exc.strerror or str(exc))

    @staticmethod
    def _due_at(entry: dict[str, Any] | None, interval: float) -> float:
        if not entry:
            return 0.0
        due = float(entry.get("checked", 0.0)) + interval
        failed = entry.get("failed")
        if failed is not None:
            due = max(due, float(failed) + min(interval, RETRY_AFTER))
        return due

    def due_at(self, key: str, interval: float) -> float:
        return self._due_at(self.archives.get(key), interval)

    def restic_due_at(self, interval: float) -> float:
        return self._due_at(self.restic, interval)

    def checked(self, key: str) -> float:
        return float(self.archives.get(key, {}).get("checked", 0.0))

    def keep_only(self, stores: set[str], present: set[str]) -> None:
        """Forget the archives of ``stores`` that are gone (a deleted backup is no longer
        counted as corrupt)."""
        for key in list(self.archives):
            if key.split(":", 1)[0] in stores and key not in present:
                del self.archives[key]

    def corrupt_count(self) -> int:
        return sum(1 for e in self.archives.values() if e.get("corrupt"))


class Verifier:
    def __init__(
        self, config: Config, jobs: JobManager, watch: Watch, stores: Stores
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.watch = watch
        self.metrics = watch.metrics
        self.state = VerifyState(config.backup_dir / STATE_NAME)
        self._cancel = threading.Event()
        self._quiet = threading.Event()
        self._quiet.set()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="wingsbak-verify", initializer=lower_priority
        )
        restic = stores.find(ResticStore)
        self._restic = ResticChecker(restic) if restic is not None else None
        bucket = stores.find(NodeBucketStore)
        self._bucket = bucket.storage if bucket is not None else None
        self._task: asyncio.Task[None] | None = None
        self._abort: Callable[[], None] | None = None  # ends the read of an object

    async def start(self) -> None:
        """The state of the last run (before the first scrape can come), then the schedule."""
        interval = self.config.system.backups.verify_interval
        if interval <= 0:
            log.info("verify_disabled", reason="system.backups.verify_interval is 0")
            return
        await asyncio.to_thread(self.state.load)
        self.metrics.corrupt_now.set(self.state.corrupt_count())
        self._task = asyncio.create_task(self._run(), name="wingsbak-verify")

    async def stop(self) -> None:
        self._cancel.set()
        self._quiet.set()
        abort = self._abort
        if abort is not None:
            with contextlib.suppress(OSError):
                abort()
        if self._restic is not None:
            await asyncio.to_thread(self._restic.stop)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True), 10.0
            )

    async def _run(self) -> None:
        while not self._cancel.is_set():
            interval = self.config.system.backups.verify_interval
            try:
                wake = await self._pass(interval)
            except Exception as exc:
                log.error("verify_pass_failed", error=str(exc), exc_info=True)
                wake = time.time() + min(interval, RETRY_AFTER)
            await asyncio.sleep(max(MIN_SLEEP, wake - time.time()))

    async def _pass(self, interval: float) -> float:
        """Check what is due; returns when the next check falls due."""
        items, listed = await self._inventory()
        self.state.keep_only(listed, {i.key for i in items})
        self.metrics.corrupt_now.set(self.state.corrupt_count())
        now = time.time()
        due = [i for i in items if self.state.due_at(i.key, interval) <= now]
        for item in sorted(due, key=lambda i: self.state.checked(i.key)):
            if self._cancel.is_set():
                break
            await self._check_archive(item)
        restic = self._restic is not None and self.state.restic_due_at(interval) <= time.time()
        if restic:
            await self._check_restic(interval)
        if due or restic:
            log.info(
                "verify_pass_done",
                archives=len(due),
                restic=restic,
                corrupt=self.state.corrupt_count(),
            )
        wake = [time.time() + interval]
        wake += [self.state.due_at(i.key, interval) for i in items]
        if self._restic is not None:
            wake.append(self.state.restic_due_at(interval))
        return min(wake)

    async def _inventory(self) -> tuple[list[StoredBackup], set[str]]:
        """The archives to check, and the stores that could list theirs."""
        items = await asyncio.to_thread(local_backups, self.config.backup_dir)
        listed = {"local"}
        if self._bucket is not None:
            try:
                items += await _on_daemon_thread(s3_backups, self._bucket, self._cancel)
                listed.add("s3")
            except S3Error as exc:
                log.warning("verify_listing_failed", store="s3", error=str(exc))
        return items, listed

    # -- archives ---------------------------------------------------------------------------

    def _idle(self) -> bool:
        return self.jobs.is_idle()

    async def _track_quiet(self) -> None:
        while True:
            if self._idle():
                self._quiet.set()
            else:
                self._quiet.clear()
            await asyncio.sleep(QUIET_POLL)

    def _opened(self, abort: Callable[[], None]) -> None:
        self._abort = abort
        if self._cancel.is_set():  # stop() came while the object was being opened
            abort()

    def _hold(self) -> None:
        """Worker thread: wait while a backup or restore runs."""
        while not self._quiet.wait(QUIET_POLL):
            if self._cancel.is_set():
                raise Cancelled("verification stopped")

    def _check_sync(self, item: StoredBackup) -> VerifyResult:
        limit = self.config.system.backups.verify_read_limit
        if item.store == "s3":
            assert self._bucket is not None
            try:
                return check_s3(
                    self._bucket, item, read_limit=limit, cancel=self._cancel, on_open=self._opened
                )
            finally:
                self._abort = None
        return check_local(
            item, read_limit=limit, cancel=self._cancel, hold=self._hold, drop_cache=True
        )

    async def _check_archive(self, item: StoredBackup) -> None:
        while not self._idle():
            await asyncio.sleep(QUIET_POLL)
        loop = asyncio.get_running_loop()
        tracker = asyncio.create_task(self._track_quiet())
        started = time.monotonic()
        entry = self.state.archives.setdefault(item.key, {})
        try:
            result = await loop.run_in_executor(self._executor, self._check_sync, item)
        except ArchiveCorrupt as exc:
            entry.pop("failed", None)
            entry["checked"] = time.time()
            await self._corrupt(item, str(exc))
        except ArchiveGone:  # deleted since the listing
            self.state.archives.pop(item.key, None)
        except SourceError as exc:
            if self._cancel.is_set():  # the daemon stopping cut the read short
                return
            entry["failed"] = time.time()
            log.warning(
                "backup_not_verified",
                server=item.server,
                backup=item.backup,
                store=item.store,
                error=str(exc),
            )
        except Cancelled:
            return
        except Exception as exc:
            entry["failed"] = time.time()
            log.error("backup_not_verified", backup=item.backup, error=str(exc), exc_info=True)
        else:
            entry.pop("failed", None)
            entry.pop("corrupt", None)
            entry["checked"] = time.time()
            self.metrics.verified.labels(item.store).inc()
            log.info(
                "backup_verified",
                server=item.server,
                backup=item.backup,
                store=item.store,
                size=result.size,
                entries=result.entries,
                checksum=result.checksum_type if result.checksum_checked else None,
                seconds=round(time.monotonic() - started, 3),
            )
        finally:
            tracker.cancel()
            self._quiet.set()
        self.metrics.corrupt_now.set(self.state.corrupt_count())
        await asyncio.to_thread(self.state.save)

    async def _corrupt(self, item: StoredBackup, reason: str, key: str = "") -> None:
        entry = self.state.archives.setdefault(key or item.key, {})
        first = not entry.get("corrupt")
        entry["corrupt"] = reason
        log.error(
            "backup_corrupt",
            server=item.server,
            backup=item.backup,
            store=item.store,
            reason=reason,
            location=item.location,
            note="kept; never deleted by wingsbak",
        )
        self.metrics.corrupt_now.set(self.state.corrupt_count())
        if first:
            await self.watch.corrupt(item.server, item.backup, item.store, reason)

    # -- restic ---------------------------------------------------------------------------

    async def _check_restic(self, interval: float) -> None:
        checker = self._restic
        assert checker is not None
        total = slices(interval)
        if self.state.restic.get("slices") != total:
            self.state.restic.update(slices=total, next=1)
        n = int(self.state.restic.get("next", 1))
        if not 1 <= n <= total:
            n = 1
        subset = f"{n}/{total}"
        while not self._idle():
            await asyncio.sleep(QUIET_POLL)
        done: concurrent.futures.Future[ResticFinding] = concurrent.futures.Future()

        def task() -> None:
            if not done.set_running_or_notify_cancel():
                return
            lower_priority()
            try:
                done.set_result(checker.check(subset))
            except BaseException as exc:
                done.set_exception(exc)

        checker.store.run_exclusive(task)
        try:
            finding = await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except (ResticError, OSError) as exc:
            self.state.restic["failed"] = time.time()
            log.warning("restic_not_verified", subset=subset, error=str(exc))
            await asyncio.to_thread(self.state.save)
            return
        self.state.restic.pop("failed", None)
        self.state.restic.update(checked=time.time(), next=n % total + 1)
        stale = [k for k, e in self.state.archives.items() if e.get("restic_slice") == subset]
        if finding.corrupt:
            repository = checker.store.repository
            for server, backup in finding.backups or [("", "")]:
                item = StoredBackup("restic", server, backup, repository)
                key = f"restic:{backup or 'repository'}"
                self.state.archives.setdefault(key, {})["restic_slice"] = subset
                if key in stale:
                    stale.remove(key)
                await self._corrupt(item, finding.reason, key)
        else:
            self.metrics.verified.labels("restic").inc()
            log.info("restic_verified", subset=subset, repository=checker.store.repository)
        for key in stale:  # damage found in this slice before, not any more
            del self.state.archives[key]
        self.metrics.corrupt_now.set(self.state.corrupt_count())
        await asyncio.to_thread(self.state.save)
