"""The ``local`` store: backup archives with their checksum sidecars on the node's disk, in
the backup directory (:mod:`wingsbak.storage.backupdir` names and places them)."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wingsbak.archive.archiver import archive_to_file
from wingsbak.archive.checksum import file_checksum, read_sidecar
from wingsbak.archive.extract import RestoreError
from wingsbak.archive.rules import IgnoreRules
from wingsbak.browse.model import BackupFolder, Browsable
from wingsbak.browse.tarview import open_local_archive
from wingsbak.formats import WINGS_ADAPTER
from wingsbak.log import get_logger
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.storage.base import (
    ArchiveStream,
    BackupSource,
    BackupStore,
    Download,
    LocalArchive,
    Outcome,
    StoreContext,
)

log = get_logger(__name__)


class LocalStore(BackupStore):
    """Backup archives with their checksum sidecars on the node's disk."""

    name = "local"

    def __init__(self, storage: BackupDirectory) -> None:
        self.storage = storage

    @classmethod
    def from_config(cls, ctx: StoreContext) -> LocalStore:
        return cls(ctx.directory)

    async def create(self, source: BackupSource) -> Outcome:
        layout = await self.storage.flavour.for_new_backup()
        return await source.in_job_thread(functools.partial(self._create, layout=layout))

    def _create(self, source: BackupSource, layout: str) -> Outcome:
        rules = IgnoreRules.for_server(source.root, source.ignore)
        path = self.storage.prepare(source.server, source.backup, layout)
        try:
            result = archive_to_file(
                source.root, path, rules, index=True, **source.options.engine_arguments()
            )
        except BaseException:
            with contextlib.suppress(OSError):
                self.storage.forget_unwritten(source.server, source.backup)
            raise
        return Outcome(
            True, result.checksum, result.checksum_type, result.size, skipped=result.unreadable
        )

    def exists(self, server: str, backup: str) -> bool:
        return self.storage.find(server, backup) is not None

    def server_of(self, backup: str) -> str | None:
        return self.storage.server_of(backup)

    def browsable(self, server: str) -> Iterator[Browsable]:
        for backup, path in self.storage.backups_of(server):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            when = datetime.fromtimestamp(st.st_mtime, UTC)
            folder = BackupFolder(backup, server, when, WINGS_ADAPTER)
            opener = functools.partial(open_local_archive, path)
            yield Browsable(folder, opener, f"{st.st_ino}-{st.st_mtime_ns}")

    def holds(self, server: str, backup: str) -> bool:
        return self.storage.exists_anywhere(backup)

    def open_download(self, server: str, backup: str) -> Download | None:
        path = self.storage.find(server, backup)
        return None if path is None else LocalArchive(path)

    def open_restore(
        self, server: str, backup: str
    ) -> contextlib.AbstractContextManager[ArchiveStream] | None:
        path = self.storage.find(server, backup)
        return None if path is None else _verified_archive(path)

    def delete(self, server: str, backup: str) -> bool:
        return self.storage.delete(server, backup)

    def recover(
        self, server: str, backup: str, entry: Mapping[str, Any] | None = None
    ) -> Outcome | None:
        """With its checksum sidecar the archive is complete (the sidecar is written after
        the archive is synced and renamed); without, it is removed, since its checksum was
        never recorded."""
        archive = self.storage.find(server, backup) if server else None
        if archive is not None:
            sidecar = read_sidecar(archive)
            if sidecar is not None:
                return Outcome(True, sidecar[1], sidecar[0], archive.stat().st_size)
            self.storage.delete(server, backup)
            log.warning("interrupted_backup_unverified_removed", backup=backup)
        removed = self.storage.remove_temporaries(server, backup) if server else 0
        if removed:
            log.info("interrupted_backup_temporaries_removed", backup=backup, removed=removed)
        if server:
            self.storage.forget_unwritten(server, backup)
        return None


@contextlib.contextmanager
def _verified_archive(path: Path) -> Iterator[ArchiveStream]:
    """The archive, checked against its sidecar before anything is written: a damaged backup
    must fail the restore, not half-replace the server's files."""
    expected = read_sidecar(path)
    if expected is not None and file_checksum(path, expected[0]) != expected[1]:
        raise RestoreError(
            f"the archive does not match its {expected[0]} checksum; nothing restored"
        )
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise RestoreError(f"cannot open {path}: {exc.strerror or exc}") from exc
    with f:
        yield ArchiveStream(f, os.fstat(f.fileno()).st_size)
