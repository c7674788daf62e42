"""The node's stored backups, found and checked: local archives (all three layouts) and
objects in the node's bucket read whole (:mod:`wingsbak.archive.verify`), a restic
repository with ``restic check``, one restic snapshot with ``restic dump``.

Blocking code for worker threads, shared by the daemon's schedule
(:mod:`wingsbak.verify.schedule`) and ``wingsbak verify`` (:mod:`wingsbak.verify.command`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wingsbak.archive.codecs import EARLIER_PREFIX, GZIP
from wingsbak.archive.verify import (
    ArchiveCorrupt,
    ArchiveGone,
    SourceError,
    VerifyResult,
    parse_checksum_line,
    verify_file,
    verify_stream,
    walk_tar,
)
from wingsbak.download_source import shutdown_socket_under
from wingsbak.formats import CHECKSUM_TYPES
from wingsbak.log import get_logger
from wingsbak.storage.bucket import NodeBucket, S3NotFound, call_with_retries, describe
from wingsbak.storage.restic import ResticError, ResticStore, _Process
from wingsbak.uuids import UUID_PATTERN

log = get_logger(__name__)

_UUID = UUID_PATTERN
_UUID_RE = re.compile(f"^{_UUID}$")
_SUFFIX = re.escape(GZIP.suffix)
# wingsbak's earlier name and Pelican Wings' name of an archive, in a server's folder.
_IN_SERVER_DIR = re.compile(f"^(?:{EARLIER_PREFIX})?({_UUID}){_SUFFIX}$")
_LEGACY = re.compile(f"^({_UUID}){_SUFFIX}$")
# restic check's words for damage (0.14: "Pack ID does not match, want <id>"; later versions
# also list "restic repair packs <id> ...").
_CORRUPT_MARK = "repository contains errors"
_PACK_IDS = re.compile(r"(?:want|packs?)\s+((?:[0-9a-f]{64}\s*)+)", re.IGNORECASE)
# The lines that say what is damaged (0.14: "Pack ID does not match, ...", "error for tree";
# later: "pack <id> contains 2 errors: ..."), not restic's advice around them.
_DETAIL = re.compile(r"[0-9a-f]{64}|error", re.IGNORECASE)
_ADVICE = ("restic ", "Fatal:")
# How many damaged packs are traced back to the backups that use them.
MAX_TRACED_PACKS = 16
# restic dump's words when the data it loads is damaged (not merely unreachable).
_DAMAGE_WORDS = ("ciphertext verification failed", "invalid hash", "does not match", "corrupt")


def is_uuid(text: str) -> bool:
    return bool(_UUID_RE.match(text))


@dataclass(slots=True, frozen=True)
class StoredBackup:
    """One archive to check: a local file or an object in the node's bucket."""

    store: str  # "local" or "s3" ("restic" for a restic check's finding)
    server: str  # "" for Pterodactyl Wings' layout, which does not say
    backup: str
    location: str  # the path, or the object key

    @property
    def key(self) -> str:
        return f"{self.store}:{self.location}"

    @property
    def name(self) -> str:
        return f"{self.server}/{self.backup}" if self.server else self.backup


# -- local archives ---------------------------------------------------------------------------


def local_backups(root: Path) -> list[StoredBackup]:
    """Every archive of the backup directory, in the three layouts (symlinks not followed)."""
    found: list[StoredBackup] = []
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for entry in top:
        if entry.is_file(follow_symlinks=False) and (m := _LEGACY.match(entry.name)):
            found.append(StoredBackup("local", "", m.group(1), entry.path))
        elif entry.is_dir(follow_symlinks=False) and is_uuid(entry.name):
            try:
                inner = sorted(os.scandir(entry.path), key=lambda e: e.name)
            except OSError as exc:
                log.warning("verify_folder_unreadable", path=entry.path, error=str(exc))
                continue
            for f in inner:
                if f.is_file(follow_symlinks=False) and (m := _IN_SERVER_DIR.match(f.name)):
                    found.append(StoredBackup("local", entry.name, m.group(1), f.path))
    return found


def check_local(
    item: StoredBackup,
    *,
    read_limit: float = 0,
    cancel: threading.Event | None = None,
    hold: Callable[[], None] | None = None,
    drop_cache: bool = False,
) -> VerifyResult:
    return verify_file(
        item.location, read_limit=read_limit, cancel=cancel, hold=hold, drop_cache=drop_cache
    )


# -- the node's bucket ------------------------------------------------------------------------


def s3_backups(storage: NodeBucket, stop: threading.Event | None = None) -> list[StoredBackup]:
    """Every backup object under the configured prefix (``stop`` ends the retries)."""
    prefix = storage.cfg.prefix
    pattern = re.compile(f"^{re.escape(prefix)}({_UUID})/({_UUID}){_SUFFIX}$")
    keys: set[str] = set()
    token: str | None = None
    while True:
        args: dict[str, Any] = {"Bucket": storage.bucket, "Prefix": prefix}
        if token:
            args["ContinuationToken"] = token
        try:
            page = call_with_retries(
                lambda a=args: storage.client.list_objects_v2(**a),
                what="ListObjectsV2",
                stop=stop,
            )
        except Exception as exc:
            raise describe(exc, storage.bucket, "listing the backups") from exc
        keys.update(str(o["Key"]) for o in page.get("Contents", []))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
    found = []
    for key in sorted(keys):
        if m := pattern.match(key):
            found.append(StoredBackup("s3", m.group(1), m.group(2), key))
    return found


def check_s3(
    storage: NodeBucket,
    item: StoredBackup,
    *,
    read_limit: float = 0,
    cancel: threading.Event | None = None,
    on_open: Callable[[Callable[[], None]], None] | None = None,
) -> VerifyResult:
    """``on_open(abort)`` is given what ends a read in progress (a stopping daemon must not
    wait for a slow store); ``cancel`` ends the retries and the reading."""
    recorded = _s3_recorded_checksum(storage, item, cancel, on_open)
    kind, expected = recorded if recorded is not None else ("sha1", None)
    try:
        answer = call_with_retries(
            lambda: storage.client.get_object(Bucket=storage.bucket, Key=item.location),
            what="GetObject",
            stop=cancel,
        )
    except Exception as exc:
        error = describe(exc, storage.bucket, "reading the backup")
        if isinstance(error, S3NotFound):
            raise ArchiveGone("the object is gone") from exc
        raise SourceError(str(error)) from exc
    body = answer["Body"]
    if on_open is not None:
        on_open(lambda: shutdown_socket_under(body))
    try:
        return verify_stream(
            body,
            checksum_type=kind,
            expected=expected,
            read_limit=read_limit,
            cancel=cancel,
        )
    finally:
        body.close()


def _s3_recorded_checksum(
    storage: NodeBucket,
    item: StoredBackup,
    stop: threading.Event | None,
    on_open: Callable[[Callable[[], None]], None] | None,
) -> tuple[str, str] | None:
    """(type, digest) from the checksum object beside the backup's; None when there is none
    (a backup from before they were kept). Read when the check starts, not when the bucket
    was listed: a backup that was being written then has its checksum by now."""
    for kind in CHECKSUM_TYPES:
        key = f"{item.location}.{kind}"
        try:
            answer = call_with_retries(
                lambda k=key: storage.client.get_object(Bucket=storage.bucket, Key=k),
                what="GetObject",
                stop=stop,
            )
            if on_open is not None:
                on_open(lambda b=answer["Body"]: shutdown_socket_under(b))
            text = answer["Body"].read(4096).decode("ascii", "replace")
        except Exception as exc:
            error = describe(exc, storage.bucket, "reading the checksum")
            if isinstance(error, S3NotFound):
                continue
            raise SourceError(str(error)) from exc
        return kind, parse_checksum_line(text, kind)
    return None


# -- restic -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ResticFinding:
    """What one ``restic check`` found. ``corrupt``: restic says the repository holds
    errors; ``backups``: (server, backup) of the snapshots that use the damaged packs restic
    named, as far as they could be traced."""

    corrupt: bool
    reason: str = ""
    backups: list[tuple[str, str]] = field(default_factory=list)


class ResticChecker:
    """``restic check`` of a store's repository; :meth:`stop` ends one that runs (restic then
    removes its lock), for a daemon that is stopping."""

    def __init__(self, store: ResticStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._running: _Process | None = None
        self._stopped = False

    def check(self, subset: str | None) -> ResticFinding:
        """Blocking. ``subset``: ``n/t`` (``--read-data-subset``), or None for all the data.
        :class:`ResticError` when restic could not check (unreachable, locked)."""
        self.store.run("unlock")  # stale locks only: a killed run's would refuse the check
        args = ["check", "--read-data-subset", subset] if subset else ["check", "--read-data"]
        with self._lock:
            if self._stopped:
                raise ResticError("restic check not started: the daemon is stopping")
            p = self._running = self.store.spawn(*args)
        try:
            while p.stdout.read(64 * 1024):
                pass
            rc = p.wait()
        finally:
            with self._lock:
                self._running = None
            p.close()
        if rc == 0 and p.timed_out is None and not p.gave_up:
            return ResticFinding(False)
        lines = list(p.stderr)
        if not any(_CORRUPT_MARK in line for line in lines):
            raise p.error(rc)
        packs = _pack_ids(lines)
        detail = [ln[:300] for ln in lines if _DETAIL.search(ln) and not ln.startswith(_ADVICE)]
        reason = "restic check: " + ("; ".join(detail[:2]) or "the repository contains errors")
        return ResticFinding(True, reason, self._trace(packs))

    def _trace(self, packs: list[str]) -> list[tuple[str, str]]:
        """The backups whose snapshots use ``packs`` (``restic find --pack``); best effort."""
        if not packs:
            return []
        try:
            found = json.loads(self.store.run("find", "--json", "--pack", *packs) or b"[]")
            ids = {str(m.get("snapshot", "")) for m in found if isinstance(m, dict)}
            listed = json.loads(self.store.run("snapshots", "--json", "--no-lock") or b"[]")
        except (ResticError, ValueError) as exc:
            log.warning("restic_damage_not_traced", error=str(exc))
            return []
        named = []
        for snap in listed or []:
            if str(snap.get("id", "")) not in ids:
                continue
            tags = dict(t.split(":", 1) for t in snap.get("tags") or () if ":" in t)
            if "backup" in tags:
                named.append((tags.get("server", ""), tags["backup"]))
        return sorted(set(named))

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            running = self._running
        if running is not None:
            running.stop()


def _pack_ids(lines: list[str]) -> list[str]:
    ids: list[str] = []
    for line in lines:
        for match in _PACK_IDS.finditer(line):
            ids.extend(match.group(1).split())
    return list(dict.fromkeys(ids))[:MAX_TRACED_PACKS]


def check_restic_snapshot(store: ResticStore, server: str, backup: str) -> int:
    """Every blob of one backup's snapshot read (``restic dump``: restic checks each one's
    MAC and hash as it loads it) and its tar stream walked; returns the number of entries.
    Takes only restic's shared lock, so backups may run meanwhile."""
    snapshot = store.find(server, backup)
    if snapshot is None:
        raise ArchiveGone("the snapshot is gone")
    with store.use():
        p = store.spawn("dump", "--archive", "tar", snapshot.id, "/")
        try:
            try:
                entries = walk_tar(p.stdout)  # type: ignore[arg-type]
            except ArchiveCorrupt:
                rc = p.wait()
                if rc != 0:  # restic stopped mid-stream: its reason, not a cut tar
                    raise _dump_error(p, rc) from None
                raise
            rc = p.wait()
        finally:
            p.close()
    if rc != 0:
        raise _dump_error(p, rc)
    return entries


def _dump_error(p: _Process, rc: int) -> Exception:
    error = p.error(rc)
    if any(word in str(error).lower() for word in _DAMAGE_WORDS):
        return ArchiveCorrupt(str(error))
    return SourceError(str(error))


def restic_backups(store: ResticStore, backup: str) -> Iterator[tuple[str, str]]:
    """(server, backup) of the repository's snapshots of ``backup``."""
    for snap in store.snapshots(f"backup:{backup}"):
        named = dict(t.split(":", 1) for t in snap.tags if ":" in t)
        if "backup" in named:
            yield named.get("server", ""), named["backup"]
