"""Backups never fill the node: a backup that writes on the node's disk (a local archive, or
the pre-signed flow's temporary file of the whole archive) is refused before it starts when
its estimated size would leave less than ``system.backups.min_free_space`` on that file
system. The estimate is the server's last local archive, else the bytes its files hold (what
the archive would read, ignored files left out). A refused backup fails at once: its report
goes to the panel without waiting for a slot, and nothing is written.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from wingsbak.archive.archiver import measure_tree
from wingsbak.archive.codecs import GZIP
from wingsbak.archive.rules import IgnoreRules, PteroignoreTooLarge
from wingsbak.config import Config, parse_min_free_space
from wingsbak.log import get_logger
from wingsbak.metrics import Metrics
from wingsbak.storage.backupdir import BackupDirectory

log = get_logger(__name__)

# The stores whose backups are written (whole) into system.backup_directory.
ON_NODE_DISK = frozenset({"local", "presigned"})


# The refusal's log line. It fails the backup, which is notified as every failed backup is
# (wingsbak.watch, system.backups.notify_url), with this sentence as its error.
BACKUP_REFUSED_NO_SPACE = "backup_refused_no_space"


class NotEnoughSpace(OSError):
    """The backup would leave less free space than ``min_free_space``; nothing written."""


class FreeSpace:
    def __init__(
        self,
        config: Config,
        storage: BackupDirectory,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.storage = storage
        self.refused = Counter(
            "wingsbak_backups_refused_no_space",
            "Backups refused before they started: they would have left less than "
            "system.backups.min_free_space free",
            registry=metrics.registry,
        )

    async def check(
        self, server: str, backup: str, ignore: str, store: str, notes: dict[str, Any]
    ) -> None:
        """Raise :class:`NotEnoughSpace` (its reason also in ``notes``, which the backup's
        event carries) when a backup to ``store`` would fill the backup file system."""
        if store not in ON_NODE_DISK:
            return
        found = await asyncio.to_thread(self._shortfall, server, ignore, store)
        if found is None:
            return
        sentence, fields = found
        log.error(BACKUP_REFUSED_NO_SPACE, server=server, backup=backup, **fields)
        self.refused.inc()
        notes["refused"] = sentence
        raise NotEnoughSpace(errno.ENOSPC, sentence)

    def _shortfall(self, server: str, ignore: str, store: str) -> tuple[str, dict[str, Any]] | None:
        """Worker thread: the refusal's sentence and numbers, or None when the backup fits."""
        fixed, fraction = parse_min_free_space(self.config.system.backups.min_free_space)
        folder = self.storage.server_dir(server)
        path = folder if folder.is_dir() else self.storage.root
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        keep = fixed or int(fraction * st.f_blocks * st.f_frsize)
        room = free - keep
        last = self._last_archive(folder) if store == "local" else None
        if last is None and room >= self._data_used():
            return None  # no server holds more than its file system does: no need to measure
        need = last if last is not None else self._used(server, ignore)
        if need <= room:
            return None
        basis = "its last backup" if last is not None else "the server's files"
        sentence = (
            f"not enough free space on {path}: {_size(free)} free, this backup needs about "
            f"{_size(need)} ({basis}) and system.backups.min_free_space keeps {_size(keep)}; "
            "nothing written"
        )
        fields = {
            "path": str(path),
            "free_bytes": free,
            "estimate_bytes": need,
            "estimate_from": "last_backup" if last is not None else "server_files",
            "keep_bytes": keep,
        }
        return sentence, fields

    def _last_archive(self, folder: Path) -> int | None:
        """The size of the server's newest local archive (wingsbak's and Pelican's names)."""
        newest: tuple[float, int] | None = None
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.name.endswith(GZIP.suffix):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if entry.is_file(follow_symlinks=False) and (
                        newest is None or st.st_mtime > newest[0]
                    ):
                        newest = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            return None
        return None if newest is None else newest[1]

    def _data_used(self) -> int:
        try:
            st = os.statvfs(self.config.data_dir)
        except OSError:
            return 1 << 62
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _used(self, server: str, ignore: str) -> int:
        root = self.config.data_dir / server
        try:
            return measure_tree(root, IgnoreRules.for_server(root, ignore))
        except (OSError, PteroignoreTooLarge):
            return 0  # the backup fails on its own, saying why


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
