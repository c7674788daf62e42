"""Which backups of a server the node can open, as :class:`BackupFolder`, and each one's
:class:`BackupView`, asked of the node's stores (each store says what it can show:
:meth:`wingsbak.storage.base.BackupStore.browsable`). Blocking code for worker threads.

What the stores show: local archives that name their server, the node bucket's objects under
the server's folder, restic snapshots tagged with the server. Not the panel's own bucket (the
node holds no key to it), nor flat archives Pterodactyl Wings wrote itself (they name no
server).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wingsbak.browse.model import BackupFolder, BackupView, Browsable
from wingsbak.errors import describe
from wingsbak.log import get_logger

log = get_logger(__name__)

# A listing of the folders asks the bucket and restic: kept this long per server, so that a
# file manager's clicks inside one backup do not ask them each time.
FOLDERS_TTL = 10.0
OPEN_VIEWS = 4  # views kept open (each holds an index or a listing, and a file)


class Store(Protocol):
    """What the catalog asks of a store (wingsbak.storage.base.BackupStore, below it)."""

    name: str

    def browsable(self, server: str) -> Iterable[Browsable]: ...

    def server_of(self, backup: str) -> str | None: ...


class Unopenable(Exception):
    """The backup is listed but this node cannot open it (now)."""


@dataclass
class Catalog:
    stores: Sequence[Store]
    _folders: dict[str, tuple[float, list[Browsable]]] = field(default_factory=dict)
    _views: OrderedDict[str, BackupView] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def folders(self, server: str) -> list[BackupFolder]:
        """The server's backups, oldest first."""
        return [item.folder for item in self._located(server)]

    def find(self, backup: str) -> BackupFolder | None:
        """The backup with this uuid, whichever server's (the command line)."""
        for store in self.stores:
            try:
                server = store.server_of(backup)
            except Exception as exc:
                log.warning("browse_store_unlisted", store=store.name, error=str(exc))
                continue
            if server:
                found = next((f for f in self.folders(server) if f.uuid == backup), None)
                if found is not None:
                    return found
        return None

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
        try:
            view = item.open()
        except Exception as exc:
            log.warning("browse_unopenable", backup=folder.uuid, error=str(exc))
            # Said to the file manager: the error's own words, never the node's paths.
            reason = describe(exc, one_line=True)
            raise Unopenable(f"the backup {folder.uuid} cannot be opened: {reason}") from exc
        with self._lock:
            self._views[key] = view
            while len(self._views) > OPEN_VIEWS:
                # Not closed here: a request may still read it; its file closes with its
                # last reference.
                self._views.popitem(last=False)
        return view

    def _located(self, server: str) -> list[Browsable]:
        now = time.monotonic()
        with self._lock:
            cached = self._folders.get(server)
        if cached is not None and now - cached[0] < FOLDERS_TTL:
            return cached[1]
        found: list[Browsable] = []
        for store in self.stores:
            try:
                found.extend(store.browsable(server))
            except Exception as exc:  # one store down must not hide the others
                log.warning("browse_store_unlisted", store=store.name, error=str(exc))
        found.sort(key=lambda i: (i.folder.created, i.folder.uuid))
        with self._lock:
            self._folders[server] = (now, found)
        return found

