"""Which store a backup goes to, and where an existing one is found.

The panel's ``s3`` adapter means the panel owns the bucket: always the pre-signed flow. Its
``wings`` adapter leaves the choice to the node: ``system.backups.store``. Backups made under
an earlier choice stay reachable: a lookup asks every store the node has configured, the
cheapest (its disk) first.

A store is one module with a :class:`~wingsbak.storage.base.BackupStore` and one line in
:data:`REGISTERED`; nothing else in the daemon names it, the configuration included: the
store parses and checks its own block of ``system.backups`` (:func:`validate`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from wingsbak import config as configuration
from wingsbak.config import Config, ConfigError
from wingsbak.formats import S3_ADAPTER
from wingsbak.log import get_logger
from wingsbak.panel import PanelClient
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.storage.base import BackupStore, StoreContext
from wingsbak.storage.local import LocalStore
from wingsbak.storage.presigned import PresignedStore
from wingsbak.storage.restic import ResticStore
from wingsbak.storage.s3 import NodeBucketStore

log = get_logger(__name__)

PANEL_BUCKET_ADAPTER = S3_ADAPTER

# One line a store, in the order a lookup asks them (the cheapest first); each reads its own
# settings (BackupStore.parse_settings) and builds itself (BackupStore.from_config).
REGISTERED: tuple[type[BackupStore], ...] = (
    LocalStore,
    NodeBucketStore,
    ResticStore,
    PresignedStore,  # the panel's bucket: its ``s3`` adapter
)
PANEL_BUCKET_STORE = PresignedStore.name


def validate(config: Config) -> None:
    """The stores' part of the configuration, checked as it is read (:class:`ConfigError`
    naming the key): ``system.backups.store`` names a registered store, and each store's
    block is parsed into its settings (``config.system.backups.settings``)."""
    b = config.system.backups
    names = [store.name for store in REGISTERED if store.selectable]
    if b.store not in names:
        raise ConfigError(f"system.backups.store: {b.store!r} is not one of " + ", ".join(names))
    for store in REGISTERED:
        if store.settings_key:
            raw = b.raw.get(store.settings_key)
            b.settings[store.settings_key] = store.parse_settings(raw, store.name == b.store)


def parse_config(raw: Any) -> Config:
    """:func:`wingsbak.config.parse_config` with the stores' part checked."""
    cfg = configuration.parse_config(raw)
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """:func:`wingsbak.config.load_config` with the stores' part checked."""
    return configuration.load_config(path, validate)

S = TypeVar("S", bound=BackupStore)


class Stores:
    def __init__(self, chosen: BackupStore, presigned: BackupStore, *lookup: BackupStore) -> None:
        """``lookup``: the node's stores in the order a lookup asks them."""
        self.chosen = chosen
        self.presigned = presigned
        self.all: list[BackupStore] = []
        for store in (*lookup, chosen, presigned):
            if all(store is not s for s in self.all):
                self.all.append(store)
        # Each store's start (see start()), by the store's name.
        self.checks: dict[str, threading.Thread] = {}

    @classmethod
    def from_config(
        cls,
        config: Config,
        directory: BackupDirectory,
        panel: PanelClient,
        on_uploaded: Callable[[int], None] | None = None,
    ) -> Stores:
        """Every registered store the configuration sets up; ``system.backups.store`` takes
        the panel's ``wings`` adapter (the configuration checked it is there)."""
        ctx = StoreContext(config, directory, panel, on_uploaded)
        built = [store for kind in REGISTERED if (store := kind.from_config(ctx)) is not None]
        by_name = {store.name: store for store in built}
        presigned = by_name[PANEL_BUCKET_STORE]
        lookup = [store for store in built if store is not presigned]
        return cls(by_name[config.system.backups.store], presigned, *lookup)

    def start(self) -> None:
        """Each store's start (its checks: a version, a bucket, stale locks) on a thread of
        its own: none delays the start, and none the others."""
        for store in self.all:
            thread = threading.Thread(
                target=store.start, name=f"wingsbak-{store.name}-check", daemon=True
            )
            self.checks[store.name] = thread
            thread.start()

    def stop(self) -> None:
        for store in self.all:
            store.stop()

    def may_hold(self, adapter: str) -> bool:
        """Whether a backup of the panel's ``adapter`` may be found on the node without a
        link: one of the panel's bucket only in the node's own (an earlier version's)."""
        return adapter != PANEL_BUCKET_ADAPTER or self.find(NodeBucketStore) is not None

    def of_earlier_journal(self, adapter: str) -> str:
        """Where the backup of a journal entry of an older version (which names no store)
        went: its adapter says (s3: the node's bucket when one was configured)."""
        bucket = self.find(NodeBucketStore)
        node_bucket = adapter == PANEL_BUCKET_ADAPTER and bucket is not None
        return NodeBucketStore.name if node_bucket else LocalStore.name

    def find(self, kind: type[S]) -> S | None:
        """The node's store of this class, when it has one."""
        return next((s for s in self.all if isinstance(s, kind)), None)

    def trusted_hosts(self) -> list[str]:
        return [host for store in self.all for host in store.trusted_hosts()]

    def outlive_servers(self) -> bool:
        """Whether some store keeps backups that Wings' own server removal leaves behind."""
        return any(store.outlives_server for store in self.all)

    def remove_server(self, server: str) -> dict[str, int]:
        """Blocking: a deleted server's backups removed from every store that keeps them."""
        removed: dict[str, int] = {}
        for store in self.all:
            if store.outlives_server:
                removed.update(store.remove_server(server))
        return removed

    def for_adapter(self, adapter: str) -> BackupStore:
        """Where a new backup of the panel's ``adapter`` is written."""
        return self.presigned if adapter == PANEL_BUCKET_ADAPTER else self.chosen

    def by_name(self, name: str) -> BackupStore | None:
        return next((s for s in self.all if s.name == name), None)

    def locate(self, server: str, backup: str) -> BackupStore | None:
        """The store holding this backup (blocking: some ask a bucket or a repository)."""
        for store in self.all:
            if store.exists(server, backup):
                return store
        return None

    async def holding(self, server: str, backup: str, timeout: float) -> BackupStore | None:
        """The store that already has a backup with this uuid, for the duplicate check: every
        store is asked at once, each on a thread. A store that fails or has not answered
        within ``timeout`` seconds (an S3 outage, a repository that does not answer) is
        logged and passed over: the node's other stores still take backups meanwhile."""
        asked = {
            asyncio.ensure_future(asyncio.to_thread(store.holds, server, backup)): store
            for store in self.all
        }
        _done, late = await asyncio.wait(asked, timeout=timeout)
        holder: BackupStore | None = None
        for task, store in asked.items():
            if task in late:
                task.cancel()  # the thread runs on to its own end; its answer is dropped
                log.warning(
                    "duplicate_check_incomplete",
                    backup=backup,
                    store=store.name,
                    error=f"no answer within {timeout:g} s",
                )
            elif task.exception() is not None:
                log.warning(
                    "duplicate_check_incomplete",
                    backup=backup,
                    store=store.name,
                    error=str(task.exception()),
                )
            elif task.result() and holder is None:
                holder = store
        return holder
