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
in it), so a snapshot's paths are the server's paths and a dump is a tar of the same names
as an archive backup.

restic takes an exclusive repository lock to forget and to prune, which would fail a backup
running meanwhile. So forgets and prunes run on one maintenance thread, only while no backup,
restore or download uses the repository; a deleted backup is hidden from lookups at once and
forgotten as soon as the repository is free.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from wingsbak.archive.archiver import ArchiveProgress, UnreadableEntry
from wingsbak.archive.codecs import GZIP, TAR, Codec
from wingsbak.archive.ratelimit import Cancelled
from wingsbak.archive.rules import IgnoreRules
from wingsbak.archive.staging import STAGING_PREFIX, staging_label
from wingsbak.archive.walk import Kind, walk
from wingsbak.browse.model import BackupFolder, Browsable
from wingsbak.config import SECRET, Config, ConfigError, build_settings
from wingsbak.formats import BEST_SPEED
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic
from wingsbak.storage.base import (
    ArchiveStream,
    BackupSource,
    BackupStore,
    Download,
    Outcome,
    StoreContext,
    StoreError,
    StreamedArchive,
)
from wingsbak.storage.restic_retries import RetryChains
from wingsbak.storage.restic_view import ResticView
from wingsbak.uuids import is_uuid

log = get_logger(__name__)

MIN_VERSION = (0, 14)
CHECKSUM_TYPE = "restic"
# Short commands (listing, forgetting, checking); a backup, a dump and a prune have none.
COMMAND_TIMEOUT = 300.0
READ_CHUNK = 1024 * 1024
# restic prints JSON status lines this often (its default is 60 a second).
PROGRESS_FPS = "4"
STDERR_LINES = 20
UNREADABLE_KEPT = 100
# The lines of `restic check` that are advice, not findings.
_CHECK_ADVICE = ("Fatal:", "The repository is damaged", "{")
RESTIC_COMPRESSION = ("auto", "max", "off")


@dataclass(slots=True)
class ResticConfig:
    """``system.backups.restic``: the node's restic repository."""

    key: ClassVar[str] = "restic"

    # Anything restic accepts: a path, s3:..., rest:..., sftp:...
    repository: str = field(default="", metadata=SECRET)
    password_file: str = ""
    binary: str = "restic"
    # Passed to restic (e.g. AWS_ACCESS_KEY_ID for an s3: repository); never logged.
    environment: dict[str, str] = field(default_factory=dict, metadata=SECRET)
    compression: str = "auto"
    # Seconds between two prunes (space comes back after deletes).
    prune_interval: float = 3600.0
    # Seconds restic may keep retrying one operation on a repository it cannot reach before
    # the command is stopped and fails (restic 0.17 and later retry for up to 15 minutes).
    retry_timeout: float = 120.0

    @classmethod
    def parse(cls, raw: Any, needed: bool = False) -> ResticConfig:
        """The block as read, checked (:class:`ConfigError` naming the key); ``needed``:
        ``system.backups.store`` names the restic store."""
        r = build_settings(cls, raw, f"system.backups.{cls.key}")
        if needed and not r.repository:
            raise ConfigError(
                "system.backups.restic.repository: must be set for system.backups.store: restic"
            )
        if r.repository and not r.password_file:
            raise ConfigError(
                "system.backups.restic.password_file: must be set with a restic repository"
            )
        if r.compression not in RESTIC_COMPRESSION:
            raise ConfigError(
                f"system.backups.restic.compression: {r.compression!r} is not one of "
                + ", ".join(RESTIC_COMPRESSION)
            )
        if r.prune_interval <= 0:
            raise ConfigError("system.backups.restic.prune_interval: must be positive (seconds)")
        if r.retry_timeout <= 0:
            raise ConfigError("system.backups.restic.retry_timeout: must be positive (seconds)")
        if not r.binary:
            raise ConfigError("system.backups.restic.binary: must name the restic program")
        return r

    @classmethod
    def of(cls, config: Config) -> ResticConfig:
        return config.system.backups.settings_of(cls.key, cls.parse)
_SCHEME = re.compile(r"^[a-z][a-z0-9]*:")
_PR_SET_PDEATHSIG = 1
_libc: Any = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(None, use_errno=True)


class ResticError(StoreError):
    """A restic command that failed, with one line for the log and the operator."""

    kind = "restic"
    answer = "The node's restic repository failed or could not be reached."

    # restic refused the repository's lock: another restic holds it, or a killed one left it.
    locked = False
    # The backup's parent snapshot could not be loaded (forgotten outside the daemon).
    parent_gone = False


@dataclass(slots=True)
class _BackupRun:
    """What one ``restic backup`` did: restic's summary, the entries left out as unreadable
    (the first few, and how many), and whether restic reported any error."""

    summary: dict[str, Any]
    unreadable: list[tuple[str, str]]
    unreadable_count: int
    errors: bool


@dataclass(slots=True, frozen=True)
class Snapshot:
    id: str
    time: str
    tags: tuple[str, ...]


_SERVER_TAG, _BACKUP_TAG = "server:", "backup:"


def server_tag(server: str) -> str:
    return f"{_SERVER_TAG}{server}"


def backup_tag(backup: str) -> str:
    return f"{_BACKUP_TAG}{backup}"


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
        # What a backup could not read: restic's JSON error lines of its archival phase (its
        # scan phase reports the same entries again), the first few kept, all counted.
        self.unreadable: list[tuple[str, str]] = []
        self.unreadable_count = 0
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
            if line.startswith("{"):
                self._note_error(line)
            if self._retries is None:
                continue
            with self._retries_lock:
                retrying = self._retries.feed(line, time.monotonic())
            if retrying and self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._give_up_after_retries, name="wingsbak-restic-retries", daemon=True
                )
                self._watchdog.start()

    def _note_error(self, line: str) -> None:
        message = _json_line(line.encode())
        if message.get("message_type") != "error" or message.get("during") != "archival":
            return
        self.unreadable_count += 1
        if len(self.unreadable) < UNREADABLE_KEPT:
            error = message.get("error")
            text = error.get("message", "") if isinstance(error, dict) else ""
            self.unreadable.append((str(message.get("item", "")), str(text or "")))

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
    outlives_server = True
    settings_key = ResticConfig.key

    @classmethod
    def parse_settings(cls, raw: Any, chosen: bool) -> ResticConfig:
        return ResticConfig.parse(raw, needed=chosen)

    @classmethod
    def from_config(cls, ctx: StoreContext) -> ResticStore | None:
        config = ctx.config
        cfg = ResticConfig.of(config)
        if not cfg.repository:
            return None
        return cls(cfg, config.backup_dir / ".restic-cache", host=config.uuid)

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
        # restic's structure checks run one at a time; a backup whose snapshot was saved
        # before the last one started takes its verdict (see _structure_check).
        self._check_lock = threading.Lock()
        self._last_check: tuple[float, list[str]] | None = None
        self._damaged = False  # the last check found damage: check every backup until sound

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

    def server_of(self, backup: str) -> str | None:
        for snap in self.snapshots(backup_tag(backup)):
            for tag in snap.tags:
                if tag.startswith(_SERVER_TAG) and is_uuid(tag[len(_SERVER_TAG) :]):
                    return tag[len(_SERVER_TAG) :]
        return None

    def browsable(self, server: str) -> Iterator[Browsable]:
        """The server's snapshots, opened with restic's own ``ls`` and ``dump``."""
        for snap in self.snapshots(server_tag(server)):
            tags = (t for t in snap.tags if t.startswith(_BACKUP_TAG))
            backup = next((t[len(_BACKUP_TAG) :] for t in tags), "")
            if not is_uuid(backup):
                continue
            folder = BackupFolder(backup, server, _snapshot_time(snap.time), self.name)
            yield Browsable(folder, functools.partial(ResticView, self, snap.id), snap.id)

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
            # E.g. refused by a live lock (another node's backup on a shared repository): the
            # forgotten data stays until a prune works, so one is tried again, as a forget is.
            retry = min(60.0, self.cfg.prune_interval)
            log.error("restic_prune_failed", error=str(exc), retry_in=retry)
            with self._cond:
                if self._prune_due is None:
                    self._prune_due = time.monotonic() + retry
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
                run = self._backup_past_parent(source, self._parent(source.server))
            except ResticError:
                # The index may name a snapshot gone meanwhile: the next backup asks restic.
                self._set_latest(source.server, None)
                raise
            summary = run.summary
            snapshot = str(summary.get("snapshot_id") or "")
            if not snapshot:
                raise ResticError("restic's summary names no snapshot")
            if cancel.is_set():
                self._queue_forget([snapshot])
                raise Cancelled("backup cancelled")
            with self._cond:
                damaged_before = self._damaged
            if added_bytes(summary) == 0 or run.errors or damaged_before:
                self._verify(source, snapshot)
            self._set_latest(source.server, snapshot)
        for path, reason in run.unreadable:
            log.warning("archive_entry_skipped", path=path, reason=reason)
        return Outcome(
            True, snapshot, CHECKSUM_TYPE, added_bytes(summary), skipped=run.unreadable_count
        )

    def _verify(self, source: BackupSource, snapshot: str) -> None:
        """restic's structure check of the repository, for a backup that may have been
        deduplicated against data the repository no longer has: one that added nothing (a
        deleted pack is never uploaded again while the index names it), one during which
        restic reported errors, and every backup once damage was found. A backup that cannot
        be vouched for fails, and its snapshot is forgotten."""
        try:
            damage = self._structure_check(source.cancel)
            if damage:
                # Once more: a check beside a running backup can read an index that backup
                # is still writing. Damage is found again; a race is not.
                damage = self._structure_check(source.cancel)
        except Cancelled:
            self._queue_forget([snapshot])
            raise
        except ResticError as exc:
            self._queue_forget([snapshot])
            raise ResticError(f"the backup could not be checked: {exc}") from exc
        with self._cond:
            self._damaged = bool(damage)
        if not damage:
            return
        self._queue_forget([snapshot])
        log.error(
            "restic_repository_damaged",
            repository=self.repository,
            backup=source.backup,
            snapshot=snapshot,
            errors=damage[-STDERR_LINES:],
            repair="restic check; then restic's repair commands (its troubleshooting guide)",
        )
        raise ResticError(
            f"the restic repository is damaged ({damage[0]}); this backup could not be "
            "restored, its snapshot is forgotten (see restic_repository_damaged in the log)"
        )

    def _structure_check(self, cancel: threading.Event) -> list[str]:
        """The damage restic's check finds (empty when none), from a check that started
        after this call: a check already running may have missed the caller's snapshot."""
        asked = time.monotonic()
        with self._check_lock:
            last = self._last_check
            if last is not None and last[0] >= asked:
                return last[1]
            started = time.monotonic()
            damage = self._check_once(cancel)
            self._last_check = (started, damage)
            return damage

    def _check_once(self, cancel: threading.Event) -> list[str]:
        # No lock: restic's check takes an exclusive one, which would fail the backups running
        # beside it (and wait for none). Packs and trees only: no data is read, and the
        # node's cache is used rather than a fresh one (a remote repository is not read whole).
        p = self.spawn("check", "--no-lock", "--with-cache")
        watcher = threading.Thread(target=_stop_on, args=(cancel, p), daemon=True)
        watcher.start()
        try:
            p.stdout.read()
            rc = p.wait()
        finally:
            p.close()
        if cancel.is_set():
            raise Cancelled("backup cancelled while the repository was checked")
        if rc == 0:
            return []
        lines = list(p.stderr)
        if p.gave_up or not any("repository contains errors" in ln for ln in lines):
            raise p.error(rc)
        found = [ln for ln in lines if not ln.startswith(_CHECK_ADVICE)]
        return found or ["restic check found errors"]

    def _backup_past_parent(self, source: BackupSource, parent: str | None) -> _BackupRun:
        """A backup; when its parent snapshot is gone (forgotten by an operator's retention
        job or another node, or a repository initialised again at the same path), once more
        without one."""
        try:
            return self._backup_past_stale_locks(source, parent)
        except ResticError as exc:
            if not exc.parent_gone or source.cancel.is_set():
                raise
            log.warning(
                "restic_parent_gone",
                server=source.server,
                backup=source.backup,
                parent=parent,
                error=str(exc),
            )
            self._set_latest(source.server, None)
            return self._backup_past_stale_locks(source, None)

    def _backup_past_stale_locks(self, source: BackupSource, parent: str | None) -> _BackupRun:
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

    def _backup(self, source: BackupSource, parent: str | None) -> _BackupRun:
        opts = source.options
        allow_unreadable = opts.allow_unreadable
        args = ["backup", "--json", "--files-from-raw", "-", "--host", self.host]
        args += ["--tag", f"{server_tag(source.server)},{backup_tag(source.backup)}"]
        if parent:
            args += ["--parent", parent]
        write_limit = float(opts.write_limit or 0)
        if write_limit > 0:
            args += ["--limit-upload", str(max(1, int(write_limit * 1024)))]
        rules = IgnoreRules.for_server(source.root, source.ignore)
        walk_skipped: list[tuple[str, str]] = []

        def on_skip(relpath: str, reason: str) -> None:
            # The walker could not read an entry: restic never hears of it.
            if not allow_unreadable:
                raise UnreadableEntry(_unreadable(relpath, reason))
            walk_skipped.append((relpath, reason))

        p = self.spawn(*args, cwd=str(source.root), stdin=True)
        cancel = source.cancel
        failure: list[BaseException] = []
        listed = [0]
        feeder = threading.Thread(
            target=self._feed_list,
            args=(p, source.root, rules, on_skip, cancel, failure, listed),
            name="wingsbak-restic-list",
            daemon=True,
        )
        watcher = threading.Thread(target=_stop_on, args=(cancel, p), daemon=True)
        feeder.start()
        watcher.start()
        summary: dict[str, Any] = {}
        progress = opts.progress
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
        saved = str(summary.get("snapshot_id") or "")
        if failure:
            if saved:
                self._queue_forget([saved])
            raise failure[0]
        if cancel.is_set():
            raise Cancelled("backup cancelled")
        if rc != 0 and not listed[0]:
            raise ResticError("nothing to back up: the server has no files, or all are ignored")
        if rc not in (0, 3):
            if saved:  # saved before restic failed: not this backup's
                self._queue_forget([saved])
            error = p.error(rc)
            error.parent_gone = bool(parent) and any(
                "no matching ID found" in ln or f"snapshot {parent[:8]}" in ln for ln in p.stderr
            )
            raise error
        if not summary:
            raise ResticError("restic backup ended without its summary")
        # Exit status 3: restic saved a snapshot without the entries it could not read.
        unreadable = [
            (path, _unread_reason(source.root, path, message)) for path, message in p.unreadable
        ]
        count = p.unreadable_count
        if rc == 3 and not count:  # said so only in its exit status
            unreadable.append(("", "restic could not read some files"))
            count = 1
        if count and not allow_unreadable:
            self._queue_forget([saved])
            raise UnreadableEntry(_unreadable(*unreadable[0]))
        if progress is not None:
            total = int(summary.get("total_bytes_processed", 0))
            files = int(summary.get("total_files_processed", 0))
            progress(ArchiveProgress(total, total, files))
        return _BackupRun(
            summary, walk_skipped + unreadable, len(walk_skipped) + count, bool(p.stderr)
        )

    def _feed_list(
        self,
        p: _Process,
        root: Path,
        rules: IgnoreRules,
        on_skip: Callable[[str, str], None],
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
            for path in _chosen_paths(root, rules, on_skip):
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
        return StreamedArchive(lambda sink, cancel: self.dump(snapshot.id, sink, cancel))

    def dump(
        self,
        snapshot: str,
        sink: IO[bytes],
        cancel: threading.Event | None = None,
        codec: Codec = GZIP,
        level: str = BEST_SPEED,
    ) -> None:
        """Blocking: the snapshot as an archive in ``codec`` into ``sink``, a writable file
        object (``restic dump``'s tar through the codec's writer)."""
        with self.use(cancel):
            p = self.spawn("dump", "--archive", "tar", snapshot, "/")
            try:
                out = codec.open_writer(sink, level)  # type: ignore[arg-type]
                try:
                    while chunk := p.stdout.read(READ_CHUNK):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled("download cancelled")
                        out.write(chunk)
                    rc = p.wait()
                    if rc != 0:
                        raise p.error(rc)
                finally:
                    out.close()
            finally:
                p.close()

    def open_restore(
        self, server: str, backup: str
    ) -> contextlib.AbstractContextManager[ArchiveStream] | None:
        snapshot = self.find(server, backup)
        return None if snapshot is None else self._restore_stream(snapshot.id)

    @contextlib.contextmanager
    def _restore_stream(self, snapshot: str) -> Iterator[ArchiveStream]:
        """The snapshot's tar stream, as restic gives it, through a pipe: a thread writes, the
        extractor reads."""
        read_fd, write_fd = os.pipe()
        stop = threading.Event()
        failure: list[BaseException] = []
        writer = os.fdopen(write_fd, "wb", buffering=0)

        def pump() -> None:
            try:
                self.dump(snapshot, writer, stop, TAR)
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
            yield ArchiveStream(reader, codec=TAR)
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

    def holds(self, server: str, backup: str) -> bool:
        path = local_path(self.cfg.repository)
        if path is not None and not (path / "config").exists():
            return False  # not created yet (the start-up check creates it): it holds nothing
        # Any server's: the backup tag alone, as the local store looks in every server's folder.
        return bool(self.snapshots(backup_tag(backup)))

    def delete(self, server: str, backup: str) -> bool:
        """Forget every snapshot of the backup (an earlier version accepted a repeated uuid
        and saved a second one)."""
        found = self.snapshots(server_tag(server), backup_tag(backup))
        if not found:
            return False
        self._queue_forget([s.id for s in found])
        with self._cond:
            latest = self._latest.get(server, "")
        if latest and any(s.id.startswith(latest) for s in found):
            self._set_latest(server, None)  # the next backup asks the repository
        return True

    def remove_server(self, server: str) -> dict[str, int]:
        return {"restic_snapshots": self.forget_server(server)}

    def forget_server(self, server: str) -> int:
        """Forget every snapshot of this server (its ``server:`` tag; pruned later, as a
        delete's are). Returns how many."""
        found = self.snapshots(server_tag(server))
        if found:
            self._queue_forget([s.id for s in found])
        self._set_latest(server, None)
        return len(found)

    def recover(
        self, server: str, backup: str, entry: Mapping[str, Any] | None = None
    ) -> Outcome | None:
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


def _chosen_paths(
    root: Path, rules: IgnoreRules, on_skip: Callable[[str, str], None]
) -> Iterator[str]:
    if rules.empty:
        # Nothing is excluded: the root's entries stand for everything below them, and
        # restic walks them itself (a list of every file costs it much more).
        with os.scandir(root) as it:
            names = sorted(e.name for e in it)
        yield from (n for n in names if not _is_staging(root, n))
        return
    pending_dir: str | None = None  # the last directory, until an entry inside it shows up
    for entry in walk(root, rules, on_skip):
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


def _is_staging(root: Path, name: str) -> bool:
    """A restore's staging is left out, as the walker leaves it out of an archive."""
    if not name.startswith(STAGING_PREFIX):
        return False
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return staging_label(root_fd, name) is not None
    finally:
        os.close(root_fd)


def _is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def _unreadable(path: str, reason: str) -> str:
    """The failure of a backup that could not read ``path``, in the archive engine's words."""
    what = repr(path) if path else "some files"
    return f"cannot read {what} ({reason}); a backup without it would be incomplete"


def _unread_reason(root: Path, path: str, message: str) -> str:
    """Why restic could not read ``path``: the system's own words when the daemon cannot
    read it either (restic 0.14 reports no message), else restic's."""
    try:
        fd = os.open(root / path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.strerror:
            return exc.strerror
    else:
        os.close(fd)
    return message or "restic could not read it"


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


def _snapshot_time(text: str) -> datetime:
    """restic's RFC 3339 time, nanoseconds cut to what datetime holds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
