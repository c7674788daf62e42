"""Which store a backup goes to, and where an existing one is found.

The panel's ``s3`` adapter means the panel owns the bucket: always the pre-signed flow. Its
``wings`` adapter leaves the choice to the node: ``system.backups.store``. Backups made under
an earlier choice stay reachable: a lookup asks every store the node has configured, the
cheapest (its disk) first.
"""

from __future__ import annotations

from wingsbak.storage.base import BackupStore

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
