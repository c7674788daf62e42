"""Which backups of a server the node can open, as :class:`BackupFolder`, and each one's
:class:`BackupView`. Blocking code for worker threads.

Shown: local archives that name their server (``<server>/<archive>`` in either of
wingsbak's or Pelican Wings' names, and flat ``<archive>`` ones whose server wingsbak
recorded when it wrote them), objects of the node's bucket under ``<prefix><server>/``, and
restic snapshots tagged ``server:<server>``. Not shown: the panel's own bucket (the
pre-signed flow; the node holds no key to it) and flat archives Pterodactyl Wings wrote
itself, which name no server.

The views of the bucket and of restic are hooks (:func:`bucket_view`, :func:`restic_view`)
that the indexed engine fills; until then such a folder is listed but opens with
:class:`Unopenable`. Every store class this package touches is named here only.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wingsbak.browse.model import BackupFolder, BackupView
from wingsbak.browse.scanview import ScanView
from wingsbak.log import get_logger

if TYPE_CHECKING:
    from wingsbak.config import Config
    from wingsbak.storage.base import BackupStore

log = get_logger(__name__)

_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
FOLDER_NAME = re.compile(rf"^\d{{4}}-\d\d-\d\d_\d{{4}}_({_UUID})$")
# A listing of the folders asks the bucket and restic: kept this long per server, so that a
# file manager's clicks inside one backup do not ask them each time.
FOLDERS_TTL = 10.0
OPEN_VIEWS = 4  # views kept open (a scanned listing is held in memory)


class Unopenable(Exception):
    """The backup is listed but this node cannot open it (yet)."""


def local_view(path: Path) -> BackupView:
    """Hook: the view of a local archive (the integrator's indexed view replaces it)."""
    return ScanView(path)


def bucket_view(storage: Any, key: str) -> BackupView:
    """Hook: the view of the object ``key`` in the node's bucket (``storage``: S3Storage)."""
    raise Unopenable("backups in the node's bucket cannot be opened on this node yet")


def restic_view(store: Any, snapshot: str) -> BackupView:
    """Hook: the view of a restic snapshot (``store``: ResticStore)."""
    raise Unopenable("restic backups cannot be opened on this node yet")


@dataclass(slots=True, frozen=True)
class _Located:
    folder: BackupFolder
    open: Callable[[], BackupView]
    version: str  # changes when the backup is replaced: a stale view is not reused


@dataclass
class Catalog:
    stores: list[BackupStore]
    _folders: dict[str, tuple[float, list[_Located]]] = field(default_factory=dict)
    _views: OrderedDict[str, BackupView] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_config(cls, cfg: Config) -> Catalog:
        """The node's stores as the configuration names them (the command line)."""
        from wingsbak.storage.local import LocalStorage, LocalStore

        stores: list[BackupStore] = [LocalStore(LocalStorage(cfg.backup_dir))]
        if cfg.s3_enabled:
            from wingsbak.storage.s3 import S3Storage, S3Store

            stores.append(S3Store(S3Storage(cfg.system.backups.s3)))
        if cfg.restic_enabled:
            from wingsbak.storage.restic import ResticStore

            restic = ResticStore(cfg.system.backups.restic, cfg.backup_dir / ".restic-cache")
            restic.checked.set()  # not the daemon: no start-up check to wait for
            stores.append(restic)
        return cls(stores)

    def folders(self, server: str) -> list[BackupFolder]:
        """The server's backups, oldest first."""
        return [item.folder for item in self._located(server)]

    def find(self, backup: str) -> BackupFolder | None:
        """The backup with this uuid, whichever server's (the command line)."""
        for server in self._servers_of(backup):
            found = next((f for f in self.folders(server) if f.uuid == backup), None)
            if found is not None:
                return found
        return None

    def _servers_of(self, backup: str) -> list[str]:
        from wingsbak.storage.local import LocalStore
        from wingsbak.storage.restic import ResticStore, backup_tag
        from wingsbak.storage.s3 import S3Store
        from wingsbak.verify.stored import local_backups, s3_backups

        servers: list[str] = []
        for store in self.stores:
            if isinstance(store, LocalStore):
                storage: Any = store.storage
                for item in local_backups(storage.root):
                    if item.backup == backup:
                        servers.append(item.server or storage.servers.server_of(backup) or "")
            elif isinstance(store, S3Store):
                servers += [i.server for i in s3_backups(store.storage) if i.backup == backup]
            elif isinstance(store, ResticStore):
                for snap in store.snapshots(backup_tag(backup)):
                    servers += [t[7:] for t in snap.tags if t.startswith("server:")]
        return [s for s in dict.fromkeys(servers) if s]

    def folder(self, server: str, name: str) -> BackupFolder | None:
        return next((i.folder for i in self._located(server) if i.folder.name == name), None)

    def view(self, folder: BackupFolder) -> BackupView:
        """The backup's tree; :class:`Unopenable` when the node cannot open it."""
        item = next((i for i in self._located(folder.server) if i.folder == folder), None)
        if item is None:
            raise Unopenable(f"the backup {folder.uuid} is gone")
        key = f"{folder.adapter}:{folder.uuid}:{item.version}"
        with self._lock:
            view = self._views.get(key)
            if view is not None:
                self._views.move_to_end(key)
                return view
        view = item.open()
        with self._lock:
            self._views[key] = view
            while len(self._views) > OPEN_VIEWS:
                self._views.popitem(last=False)
        return view

    def _located(self, server: str) -> list[_Located]:
        now = time.monotonic()
        with self._lock:
            cached = self._folders.get(server)
        if cached is not None and now - cached[0] < FOLDERS_TTL:
            return cached[1]
        found: list[_Located] = []
        for store in self.stores:
            try:
                found.extend(self._of_store(store, server))
            except Exception as exc:  # one store down must not hide the others
                log.warning("browse_store_unlisted", store=store.name, error=str(exc))
        found.sort(key=lambda i: (i.folder.created, i.folder.uuid))
        with self._lock:
            self._folders[server] = (now, found)
        return found

    def _of_store(self, store: BackupStore, server: str) -> Iterable[_Located]:
        from wingsbak.storage.local import LocalStore
        from wingsbak.storage.restic import ResticStore
        from wingsbak.storage.s3 import S3Store

        if isinstance(store, LocalStore):
            return _local(store, server)
        if isinstance(store, S3Store):
            return _bucket(store, server)
        if isinstance(store, ResticStore):
            return _restic(store, server)
        return ()  # the panel's bucket (pre-signed): no key to it on the node


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _local(store: Any, server: str) -> Iterable[_Located]:
    from wingsbak.verify.stored import local_backups

    storage = store.storage
    for item in local_backups(storage.root):
        owner = item.server or storage.servers.server_of(item.backup)
        if owner != server:
            continue
        path = Path(item.location)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        folder = BackupFolder(item.backup, server, _when(st.st_mtime), "wings")
        yield _Located(folder, lambda p=path: local_view(p), f"{st.st_ino}-{st.st_mtime_ns}")


def _bucket(store: Any, server: str) -> Iterable[_Located]:
    from wingsbak.storage.s3 import call_with_retries

    storage = store.storage
    prefix = f"{storage.cfg.prefix}{server}/"
    pattern = re.compile(rf"^{re.escape(prefix)}({_UUID})\.tar\.gz$")
    token: str | None = None
    while True:
        args: dict[str, Any] = {"Bucket": storage.bucket, "Prefix": prefix}
        if token:
            args["ContinuationToken"] = token
        page = call_with_retries(
            lambda a=args: storage.client.list_objects_v2(**a), what="ListObjectsV2"
        )
        for obj in page.get("Contents", []):
            if m := pattern.match(str(obj["Key"])):
                created = obj["LastModified"]
                folder = BackupFolder(m.group(1), server, created, "s3")
                key = str(obj["Key"])
                version = str(obj.get("ETag", created))
                yield _Located(folder, lambda k=key: bucket_view(storage, k), version)
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _restic(store: Any, server: str) -> Iterable[_Located]:
    from wingsbak.storage.restic import server_tag

    for snap in store.snapshots(server_tag(server)):
        tags = dict(t.split(":", 1) for t in snap.tags if ":" in t)
        backup = tags.get("backup", "")
        if not re.fullmatch(_UUID, backup):
            continue
        folder = BackupFolder(backup, server, _restic_time(snap.time), "restic")
        yield _Located(folder, lambda s=snap.id: restic_view(store, s), snap.id)


def _restic_time(text: str) -> datetime:
    """restic's RFC 3339 time, nanoseconds cut to what datetime holds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return _when(0)
