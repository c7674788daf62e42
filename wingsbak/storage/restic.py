"""Incremental, deduplicated backups in one node-wide restic repository.

restic is driven as a child process from worker threads (never on the event loop); only its
``--json`` output and exit status are interpreted, its human output is only ever quoted in
an error. Secrets reach it through its environment (``RESTIC_PASSWORD_FILE``, the configured
``environment``), which is never logged.

One snapshot per backup, tagged ``server:<uuid>`` and ``backup:<uuid>``; the server's latest
snapshot is the parent. Every restic command opens the repository's key first (a deliberately
slow key derivation), so a backup is one command: the parent comes from a small index of each
server's latest snapshot kept beside the forget list, and the report names the snapshot as
restic's summary does. The files are chosen by wingsbak's own walker and ignore rules and
handed to restic as a NUL-separated list of paths relative to the server root (restic runs
in it), so a snapshot's paths are the server's paths and a dump is a ``.tar.gz`` of the same
names as a ``.tar.gz`` backup.

restic takes an exclusive repository lock to forget and to prune, which would fail a backup
running meanwhile. So forgets and prunes run on one maintenance thread, only while no backup,
restore or download uses the repository; a deleted backup is hidden from lookups at once and
forgotten as soon as the repository is free.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from wingsbak.archive.archiver import ArchiveProgress
from wingsbak.archive.gzip import NONE, open_gzip_writer
from wingsbak.archive.rules import IgnoreRules
from wingsbak.archive.sink import Cancelled
from wingsbak.archive.walk import Kind, walk
from wingsbak.config import ResticConfig
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic
from wingsbak.storage.base import (
    ArchiveStream,
    BackupSource,
    BackupStore,
    Download,
    Outcome,
    StreamedArchive,
)
from wingsbak.storage.restic_retries import RetryChains

log = get_logger(__name__)

MIN_VERSION = (0, 14)
CHECKSUM_TYPE = "restic"
# Short commands (listing, forgetting, checking); a backup, a dump and a prune have none.
COMMAND_TIMEOUT = 300.0
READ_CHUNK = 1024 * 1024
# restic prints JSON status lines this often (its default is 60 a second).
PROGRESS_FPS = "4"
STDERR_LINES = 20
_SCHEME = re.compile(r"^[a-z][a-z0-9]*:")
_PR_SET_PDEATHSIG = 1
_libc: Any = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(None, use_errno=True)


class ResticError(Exception):
    """A restic command that failed, with one line for the log and the operator."""

    # restic refused the repository's lock: another restic holds it, or a killed one left it.
    locked = False


@dataclass(slots=True, frozen=True)
class Snapshot:
    id: str
    time: str
    tags: tuple[str, ...]


def server_tag(server: str) -> str:
    return f"server:{server}"


def backup_tag(backup: str) -> str:
    return f"backup:{backup}"


def redact(repository: str) -> str:
    """The repository for a log line: a password in its URL never is."""
    scheme = _SCHEME.match(repository)
    rest = repository[scheme.end() :] if scheme else repository
    if "://" not in rest:
        return repository
    parts = urlsplit(rest)
    if parts.password is None:
        return repository
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return (scheme.group(0) if scheme else "") + urlunsplit(parts._replace(netloc=netloc))


def local_path(repository: str) -> Path | None:
    """The directory of a repository on the node's disk; None for a remote one."""
    if repository.startswith("local:"):
        return Path(repository[len("local:") :])
    if _SCHEME.match(repository):
        return None
    return Path(repository)


def _die_with_parent() -> None:
    # restic must not outlive a daemon killed with -9: an orphaned backup would still write
    # its snapshot after the restarted daemon has reported the backup failed.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Process:
    """One running restic command: stderr collected on a thread (its last lines explain a
    failure), stopped with SIGINT (restic then removes its lock and writes no snapshot).

    restic retries a repository it cannot reach on its own (from 0.17 for up to 15 minutes);
    once one operation has been retried for ``retry_timeout`` seconds (:mod:`restic_retries`),
    the command is stopped and fails with restic's last error. :meth:`expire` stops a command
    that has run too long."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        stdin: bool = False,
        retry_timeout: float | None = None,
    ) -> None:
        self.argv = argv
        self.retry_timeout = retry_timeout
        self._retries = RetryChains(retry_timeout) if retry_timeout is not None else None
        self._retries_lock = threading.Lock()
        self.gave_up = False
        self.timed_out: float | None = None
        self._watchdog: threading.Thread | None = None
        try:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,  # only prctl, libc loaded before
                close_fds=True,
            )
        except FileNotFoundError as exc:
            raise ResticError(
                f"the restic program {argv[0]!r} was not found "
                "(install restic or set system.backups.restic.binary)"
            ) from exc
        except PermissionError as exc:
            raise ResticError(f"the restic program {argv[0]!r} cannot be run") from exc
        self.stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            self.stderr.append(line)
            if self._retries is None:
                continue
            with self._retries_lock:
                retrying = self._retries.feed(line, time.monotonic())
            if retrying and self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._give_up_after_retries, name="wingsbak-restic-retries", daemon=True
                )
                self._watchdog.start()

    def _give_up_after_retries(self) -> None:
        assert self._retries is not None
        while self.proc.poll() is None:
            with self._retries_lock:
                given_up = self._retries.given_up(time.monotonic())
            if given_up:
                self.gave_up = True
                self.stop()
                return
            time.sleep(0.2)

    def expire(self, timeout: float) -> None:
        """Stop a command that has run for ``timeout`` seconds (a timer's callback)."""
        if self.proc.poll() is None:
            self.timed_out = timeout
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def wait(self) -> int:
        rc = self.proc.wait()
        self._reader.join(timeout=5)
        return rc

    def error(self, rc: int) -> ResticError:
        """restic's own explanation (its ``Fatal:`` line, else its last line) of a failure."""
        if self.gave_up:
            assert self._retries is not None
            return ResticError(
                f"restic {self.argv[1]} failed: the repository did not answer for "
                f"{self.retry_timeout:g} s (system.backups.restic.retry_timeout): "
                f"{self._retries.last_error}"
            )
        if self.timed_out is not None:
            return ResticError(f"restic {self.argv[1]} did not finish within {self.timed_out:g} s")
        lines = list(self.stderr)
        locked = [ln for ln in lines if "is already locked" in ln]
        fatal = [ln for ln in lines if ln.startswith("Fatal:")]
        reason = (locked or fatal or lines or [f"exit status {rc}"])[-1]
        error = ResticError(f"restic {self.argv[1]} failed: {reason.removeprefix('Fatal: ')}")
        error.locked = bool(locked)
        return error

    def close(self) -> None:
        self.stop()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class ResticStore(BackupStore):
    name = "restic"

    def __init__(
        self, cfg: ResticConfig, cache_dir: Path, state_file: Path | None = None, host: str = ""
    ) -> None:
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.state_file = state_file or cache_dir.parent / ".wingsbak-restic-forget.json"
        self.latest_file = self.state_file.with_name(".wingsbak-restic-latest.json")
        self._latest: dict[str, str] = {}  # server -> its latest snapshot (id or short id)
        # True for a repository this store created: every snapshot in it is in the index.
        self._index_complete = False
        self.host = host or "wingsbak"
        self.repository = redact(cfg.repository)
        self._cond = threading.Condition()
        self._users = 0
        self._exclusive = False
        self._stopping = False
        self._pending: set[str] = set()  # snapshot ids deleted, still to forget
        self._prune_due: float | None = None
        self._last_prune = float("-inf")
        self._worker: threading.Thread | None = None
        self._exclusive_tasks: list[Callable[[], None]] = []  # see run_exclusive
        self.usable: bool | None = None  # set by start()
        self.checked = threading.Event()  # start() has run: a new repository exists
        self.prunes = 0

    # -- processes ----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update(self.cfg.environment)
        env["RESTIC_REPOSITORY"] = self.cfg.repository
        env["RESTIC_PASSWORD_FILE"] = self.cfg.password_file
        env["RESTIC_CACHE_DIR"] = str(self.cache_dir)
        env["RESTIC_PROGRESS_FPS"] = PROGRESS_FPS
        return env

    def spawn(self, *args: str, cwd: str | None = None, stdin: bool = False) -> _Process:
        argv = [self.cfg.binary, *args]
        if self.cfg.compression != "auto":
            argv[2:2] = [f"--compression={self.cfg.compression}"]
        return _Process(argv, self.env(), cwd, stdin, self.cfg.retry_timeout)

    def run(self, *args: str, timeout: float | None = COMMAND_TIMEOUT) -> bytes:
        """A short command's whole stdout; :class:`ResticError` when it fails."""
        p = self.spawn(*args)
        timer = threading.Timer(timeout, p.expire, (timeout,)) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            out = p.stdout.read()
            rc = p.wait()
        finally:
            if timer is not None:
                timer.cancel()
            p.close()
        if rc != 0 or p.timed_out is not None:
            raise p.error(rc)
        return out

    def snapshots(self, *tags: str) -> list[Snapshot]:
        """Snapshots carrying all ``tags``, oldest first; deleted ones left out. Listing
        needs no lock, so it works while a forget or prune holds the repository."""
        out = self.run("snapshots", "--json", "--no-lock", "--tag", ",".join(tags))
        try:
            listed = json.loads(out or b"[]") or []
        except ValueError as exc:
            raise ResticError("restic snapshots did not answer JSON") from exc
        found = [Snapshot(s["id"], s.get("time", ""), tuple(s.get("tags") or ())) for s in listed]
        with self._cond:
            found = [s for s in found if not any(s.id.startswith(p) for p in self._pending)]
        return sorted(found, key=lambda s: s.time)

    def find(self, server: str, backup: str) -> Snapshot | None:
        found = self.snapshots(server_tag(server), backup_tag(backup))
        return found[-1] if found else None

    # -- using the repository (shared) and maintaining it (exclusive) --------------------------

    @contextlib.contextmanager
    def use(self, cancel: threading.Event | None = None) -> Iterator[None]:
        # A backup accepted in the daemon's first moments waits for the start-up check,
        # which creates a missing repository and removes a crashed run's stale locks.
        while not self.checked.wait(0.5):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled before the repository was checked")
        with self._cond:
            while self._exclusive:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled while the repository was being pruned")
                self._cond.wait(0.5)
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def _maintain(self) -> None:
        """The maintenance thread: forgets and prunes, each only while nothing else uses the
        repository (new users wait until it is done)."""
        while True:
            with self._cond:
                while not self._stopping and not self._work_ready():
                    timeout = None
                    if self._prune_due is not None:
                        timeout = max(0.05, self._prune_due - time.monotonic())
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                self._exclusive = True
                forget = sorted(self._pending)
                prune = self._prune_due is not None and self._prune_due <= time.monotonic()
                tasks, self._exclusive_tasks = self._exclusive_tasks, []
            try:
                for task in tasks:
                    task()
                if forget:
                    self._forget(forget)
                if prune:
                    self._prune()
            except Exception as exc:
                log.error("restic_maintenance_failed", error=str(exc), exc_info=True)
            finally:
                with self._cond:
                    self._exclusive = False
                    self._cond.notify_all()

    def _work_ready(self) -> bool:
        if self._users:
            return False
        due = self._prune_due is not None and self._prune_due <= time.monotonic()
        return bool(self._pending) or due or bool(self._exclusive_tasks)

    def run_exclusive(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the maintenance thread as forgets and prunes run: once nothing
        else uses the repository, with new users waiting until it returns (e.g. ``restic
        check``, which locks the repository exclusively). It must not raise."""
        with self._cond:
            self._exclusive_tasks.append(task)
            self._cond.notify_all()

    def _unlock_stale(self) -> None:
        """Remove the locks restic calls stale (of a restic killed on this node, or older than
        30 minutes): they would refuse the exclusive lock that forget and prune take. Run
        only while no restic of this store uses the repository."""
        self.run("unlock")

    def _forget(self, ids: list[str]) -> None:
        try:
            self._unlock_stale()
            self.run("forget", *ids)
        except ResticError as exc:
            log.error("restic_forget_failed", snapshots=ids, error=str(exc))
            with self._cond:  # tried again after the next pause, not in a tight loop
                self._prune_due = time.monotonic() + min(60.0, self.cfg.prune_interval)
            return
        log.info("restic_snapshots_forgotten", snapshots=ids)
        with self._cond:
            self._pending.difference_update(ids)
            self._save_pending()
            self._prune_due = max(time.monotonic(), self._last_prune + self.cfg.prune_interval)

    def _prune(self) -> None:
        with self._cond:
            self._prune_due = None
            self._last_prune = time.monotonic()
        before = self._repository_bytes()
        started = time.monotonic()
        try:
            self._unlock_stale()
            self.run("prune", timeout=None)
        except ResticError as exc:
            log.error("restic_prune_failed", error=str(exc))
            return
        after = self._repository_bytes()
        self.prunes += 1
        log.info(
            "restic_pruned",
            freed_bytes=None if before is None or after is None else before - after,
            repository_bytes=after,
            seconds=round(time.monotonic() - started, 3),
        )

    def _repository_bytes(self) -> int | None:
        """The repository's size on disk (a local one; a remote one cannot say cheaply)."""
        path = local_path(self.cfg.repository)
        if path is None:
            return None
        total = 0
        for folder, _dirs, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
        return total

    def _load_state(self) -> None:
        pending = _read_json(self.state_file, [])
        index = _read_json(self.latest_file, {})
        latest = index.get("latest") if isinstance(index, dict) else None
        with self._cond:
            self._pending.update(str(i) for i in pending if isinstance(pending, list))
            if isinstance(latest, dict):
                self._latest.update({str(k): str(v) for k, v in latest.items()})
                self._index_complete = index.get("complete") is True

    def _save_pending(self) -> None:
        write_json_atomic(self.state_file, sorted(self._pending))

    def _parent(self, server: str) -> str | None:
        """The server's latest snapshot: from the index, else (a server this node has not
        backed up since its index began) from the repository."""
        with self._cond:
            known = self._latest.get(server)
        if known is not None or self._index_complete:
            return known
        previous = self.snapshots(server_tag(server))
        return previous[-1].id if previous else None

    def _set_latest(self, server: str, snapshot: str | None) -> None:
        with self._cond:
            if snapshot is None:
                self._latest.pop(server, None)
            else:
                self._latest[server] = snapshot
            self._save_index()

    def _save_index(self) -> None:
        with self._cond:
            index = {"complete": self._index_complete, "latest": self._latest}
            try:
                write_json_atomic(self.latest_file, index)
            except OSError as exc:  # costs the next backup one listing, nothing else
                log.warning("restic_index_not_saved", error=str(exc))

    def _queue_forget(self, ids: list[str]) -> None:
        with self._cond:
            self._pending.update(ids)
            self._save_pending()
            self._cond.notify_all()

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> bool:
        """Blocking (a background thread at start): check restic and the repository, create a
        missing local one, remove stale locks of a crashed run, then start maintenance."""
        self._load_state()
        try:
            version = self._check_version()
            self._init_if_missing()
            self.run("cat", "config")
            self.run("unlock")
        except ResticError as exc:
            self.usable = False
            log.error("restic_unusable", repository=self.repository, error=str(exc))
        else:
            self.usable = True
            log.info("restic_ok", repository=self.repository, version=version)
        self.checked.set()
        # Also when unusable now: the repository may come back, and deletes still queue.
        with self._cond:
            if self._worker is None and not self._stopping:
                self._worker = threading.Thread(
                    target=self._maintain, name="wingsbak-restic", daemon=True
                )
                self._worker.start()
        return bool(self.usable)

    def _check_version(self) -> str:
        # `restic version` has no JSON before 0.15; its first word pair is stable.
        out = self.run("version").decode("utf-8", "replace")
        match = re.match(r"restic (\d+)\.(\d+)\.(\d+)", out)
        if match is None:
            raise ResticError(f"{self.cfg.binary!r} does not say it is restic")
        if tuple(int(g) for g in match.groups()[:2]) < MIN_VERSION:
            raise ResticError(f"restic {match.group(0)[7:]} is too old; 0.14 or later is needed")
        return match.group(0)[7:]

    def _init_if_missing(self) -> None:
        path = local_path(self.cfg.repository)
        if path is None:
            return
        try:
            empty = not path.exists() or (path.is_dir() and not any(path.iterdir()))
        except OSError as exc:
            raise ResticError(f"cannot read the repository directory {path}: {exc}") from exc
        if empty:
            self.run("init")
            log.info("restic_repository_initialised", repository=self.repository)
            with self._cond:
                self._latest.clear()
                self._index_complete = True
                self._save_index()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # -- the store interface -------------------------------------------------------------------

    async def create(self, source: BackupSource) -> Outcome:
        return await source.in_job_thread(self._create)

    def _create(self, source: BackupSource) -> Outcome:
        cancel = source.cancel
        with self.use(cancel):
            try:
                summary = self._backup_past_stale_locks(source, self._parent(source.server))
            except ResticError:
                # The index may name a snapshot gone meanwhile: the next backup asks restic.
                self._set_latest(source.server, None)
                raise
            snapshot = str(summary.get("snapshot_id") or "")
            if not snapshot:
                raise ResticError("restic's summary names no snapshot")
            if cancel.is_set():
                self._queue_forget([snapshot])
                raise Cancelled("backup cancelled")
            self._set_latest(source.server, snapshot)
        return Outcome(True, snapshot, CHECKSUM_TYPE, added_bytes(summary))

    def _backup_past_stale_locks(self, source: BackupSource, parent: str | None) -> dict[str, Any]:
        """A backup; refused for a lock, once more after the stale locks are removed (a
        restic killed during a prune leaves an exclusive lock that refuses every backup)."""
        try:
            return self._backup(source, parent)
        except ResticError as exc:
            if not exc.locked or source.cancel.is_set():
                raise
            log.warning("restic_locked", backup=source.backup, error=str(exc))
            self._unlock_stale()
            return self._backup(source, parent)

    def _backup(self, source: BackupSource, parent: str | None) -> dict[str, Any]:
        opts = source.options
        args = ["backup", "--json", "--files-from-raw", "-", "--host", self.host]
        args += ["--tag", f"{server_tag(source.server)},{backup_tag(source.backup)}"]
        if parent:
            args += ["--parent", parent]
        write_limit = float(opts.get("write_limit") or 0)
        if write_limit > 0:
            args += ["--limit-upload", str(max(1, int(write_limit * 1024)))]
        rules = IgnoreRules.for_server(source.root, source.ignore)
        p = self.spawn(*args, cwd=str(source.root), stdin=True)
        cancel = source.cancel
        failure: list[BaseException] = []
        listed = [0]
        feeder = threading.Thread(
            target=self._feed_list,
            args=(p, source.root, rules, cancel, failure, listed),
            name="wingsbak-restic-list",
            daemon=True,
        )
        watcher = threading.Thread(target=_stop_on, args=(cancel, p), daemon=True)
        feeder.start()
        watcher.start()
        summary: dict[str, Any] = {}
        progress = opts.get("progress")
        try:
            for line in p.stdout:
                message = _json_line(line)
                if message.get("message_type") == "summary":
                    summary = message
                elif message.get("message_type") == "status" and progress is not None:
                    progress(_progress(message))
            rc = p.wait()
        finally:
            p.close()
            feeder.join()
        if failure:
            raise failure[0]
        if cancel.is_set():
            raise Cancelled("backup cancelled")
        if rc != 0 and not listed[0]:
            raise ResticError("nothing to back up: the server has no files, or all are ignored")
        if rc == 3:  # some files could not be read: skipped, as the .tar.gz engine does
            log.warning("restic_backup_incomplete", backup=source.backup, errors=list(p.stderr))
        elif rc != 0:
            if summary.get("snapshot_id"):  # saved before restic failed: not this backup's
                self._queue_forget([str(summary["snapshot_id"])])
            raise p.error(rc)
        if not summary:
            raise ResticError("restic backup ended without its summary")
        if progress is not None:
            total = int(summary.get("total_bytes_processed", 0))
            files = int(summary.get("total_files_processed", 0))
            progress(ArchiveProgress(total, total, files))
        return summary

    def _feed_list(
        self,
        p: _Process,
        root: Path,
        rules: IgnoreRules,
        cancel: threading.Event,
        failure: list[BaseException],
        listed: list[int],
    ) -> None:
        """The chosen paths, NUL-separated, into restic's stdin. Files and symlinks are
        listed (restic adds their directories, with their metadata); a directory only when
        it is empty, since a listed directory would bring its ignored contents along."""
        stdin = p.proc.stdin
        assert stdin is not None
        try:
            batch: list[bytes] = []
            for path in _chosen_paths(root, rules):
                if cancel.is_set():
                    return
                batch.append(os.fsencode(path) + b"\0")
                listed[0] += 1
                if len(batch) >= 1024:
                    stdin.write(b"".join(batch))
                    batch.clear()
            stdin.write(b"".join(batch))
        except BrokenPipeError:
            pass  # restic stopped reading: its exit status says why
        except BaseException as exc:
            failure.append(exc)
            p.stop()
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def exists(self, server: str, backup: str) -> bool:
        return self.find(server, backup) is not None

    def open_download(self, server: str, backup: str) -> Download | None:
        snapshot = self.find(server, backup)
        if snapshot is None:
            return None
        return StreamedArchive(lambda sink, cancel: self.dump_targz(snapshot.id, sink, cancel))

    def dump_targz(
        self,
        snapshot: str,
        sink: IO[bytes],
        cancel: threading.Event | None = None,
        level: str = "best_speed",
    ) -> None:
        """Blocking: the snapshot as a ``.tar.gz`` into ``sink``, a writable file object
        (``restic dump`` through the archiver's gzip writer)."""
        with self.use(cancel):
            p = self.spawn("dump", "--archive", "tar", snapshot, "/")
            try:
                gz = open_gzip_writer(sink, level)  # type: ignore[arg-type]
                try:
                    while chunk := p.stdout.read(READ_CHUNK):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled("download cancelled")
                        gz.write(chunk)
                    rc = p.wait()
                    if rc != 0:
                        raise p.error(rc)
                finally:
                    gz.close()
            finally:
                p.close()

    def open_restore(
        self, server: str, backup: str
    ) -> contextlib.AbstractContextManager[ArchiveStream] | None:
        snapshot = self.find(server, backup)
        return None if snapshot is None else self._restore_stream(snapshot.id)

    @contextlib.contextmanager
    def _restore_stream(self, snapshot: str) -> Iterator[ArchiveStream]:
        """The snapshot's tar stream, wrapped in a stored (level 0) gzip for the extractor,
        through a pipe: a thread writes, the extractor reads."""
        read_fd, write_fd = os.pipe()
        stop = threading.Event()
        failure: list[BaseException] = []
        writer = os.fdopen(write_fd, "wb", buffering=0)

        def pump() -> None:
            try:
                self.dump_targz(snapshot, writer, stop, NONE)
            except BrokenPipeError:
                pass  # the extractor stopped reading: it raised, and says why
            except BaseException as exc:
                failure.append(exc)
            finally:
                with contextlib.suppress(OSError):
                    writer.close()

        thread = threading.Thread(target=pump, name="wingsbak-restic-dump", daemon=True)
        thread.start()
        reader = os.fdopen(read_fd, "rb", buffering=0)
        try:
            yield ArchiveStream(reader)
        except BaseException as exc:
            stop.set()
            reader.close()
            thread.join()
            if failure and not isinstance(exc, Cancelled):
                # restic's reason (a wrong password, an unreachable repository) says more
                # than the extractor's "the archive is truncated".
                raise failure[0] from exc
            raise
        reader.close()
        thread.join()
        if failure:
            raise failure[0]

    def delete(self, server: str, backup: str) -> bool:
        snapshot = self.find(server, backup)
        if snapshot is None:
            return False
        self._queue_forget([snapshot.id])
        with self._cond:
            latest = self._latest.get(server, "")
        if latest and snapshot.id.startswith(latest):
            self._set_latest(server, None)  # the next backup asks the repository
        return True

    def recover(self, server: str, backup: str) -> Outcome | None:
        """A snapshot of a backup the daemon died in is forgotten: the backup was reported
        failed, and a failed backup leaves no snapshot."""
        found = self.snapshots(backup_tag(backup))
        if found:
            self._queue_forget([s.id for s in found])
            log.info("interrupted_snapshot_forgotten", backup=backup)
        return None


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        log.error("restic_state_unreadable", path=str(path), error=str(exc))
        return default


def _chosen_paths(root: Path, rules: IgnoreRules) -> Iterator[str]:
    if rules.empty:
        # Nothing is excluded: the root's entries stand for everything below them, and
        # restic walks them itself (a list of every file costs it much more).
        with os.scandir(root) as it:
            yield from sorted(e.name for e in it)
        return
    pending_dir: str | None = None  # the last directory, until an entry inside it shows up
    for entry in walk(root, rules, _log_skip):
        inside = pending_dir is not None and entry.relpath.startswith(pending_dir + "/")
        if pending_dir is not None and not inside and _is_empty_dir(root / pending_dir):
            yield pending_dir
        pending_dir = None
        if entry.kind is Kind.DIR:
            pending_dir = entry.relpath
        else:
            yield entry.relpath
    if pending_dir is not None and _is_empty_dir(root / pending_dir):
        yield pending_dir


def _is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def _log_skip(relpath: str, reason: str) -> None:
    log.warning("archive_entry_skipped", path=relpath, reason=reason)


def added_bytes(summary: dict[str, Any]) -> int:
    """What a backup added to the repository, from restic's summary: ``data_added_packed``
    (after compression, restic 0.17 and later), else ``data_added`` (before compression)."""
    packed = summary.get("data_added_packed")
    return int(packed if packed is not None else summary.get("data_added", 0))


def _json_line(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _progress(status: dict[str, Any]) -> ArchiveProgress:
    return ArchiveProgress(
        int(status.get("bytes_done", 0)),
        int(status.get("total_bytes", 0)),
        int(status.get("files_done", 0)),
    )


def _stop_on(cancel: threading.Event, p: _Process) -> None:
    while p.proc.poll() is None:
        if cancel.wait(0.25):
            p.stop()
            return
