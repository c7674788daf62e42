"""Which store a backup goes to, and where an existing one is found.

The panel's ``s3`` adapter means the panel owns the bucket: always the pre-signed flow. Its
``wings`` adapter leaves the choice to the node: ``system.backups.store``. Backups made under
an earlier choice stay reachable: a lookup asks every store the node has configured, the
cheapest (its disk) first.
"""

from __future__ import annotations

import asyncio

from wingsbak.log import get_logger
from wingsbak.storage.base import BackupStore

log = get_logger(__name__)

PANEL_BUCKET_ADAPTER = "s3"


class Stores:
    def __init__(self, chosen: BackupStore, presigned: BackupStore, *lookup: BackupStore) -> None:
        """``lookup``: the node's stores in the order a lookup asks them."""
        self.chosen = chosen
        self.presigned = presigned
        self.all: list[BackupStore] = []
        for store in (*lookup, chosen, presigned):
            if all(store is not s for s in self.all):
                self.all.append(store)

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
