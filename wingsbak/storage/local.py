"""Local (``wings`` adapter) backups: ``<backup_directory>/<server>/backup-<uuid>.tar.gz``.

One folder per server (as Pelican does) so a backup can only be found through the server it
belongs to. Archives laid out the way Pterodactyl Wings does (``<backup_directory>/<uuid>.tar.gz``)
and the way Pelican Wings does (``<backup_directory>/<server>/<uuid>.tar.gz``, pelican-dev/wings
090841d ``server/backup/backup.go``, ``Path``) are found too, so wingsbak can take over a node
that already has backups: download, restore, delete and the duplicate check see all three.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from wingsbak.archive.archiver import archive_to_file
from wingsbak.archive.extract import RestoreError
from wingsbak.archive.rules import IgnoreRules
from wingsbak.archive.sink import file_checksum, read_sidecar, sidecar_path
from wingsbak.log import get_logger
from wingsbak.storage.base import (
    ArchiveStream,
    BackupSource,
    BackupStore,
    Download,
    LocalArchive,
    Outcome,
)

log = get_logger(__name__)

CHECKSUM_TYPES = ("sha1", "sha256")


def archive_name(backup_uuid: str) -> str:
    return f"backup-{backup_uuid}.tar.gz"


class LocalStorage:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory)

    def server_dir(self, server_uuid: str) -> Path:
        return self.root / server_uuid

    def path_for(self, server_uuid: str, backup_uuid: str) -> Path:
        """Where a new archive of this backup is written (identifiers already validated)."""
        return self.server_dir(server_uuid) / archive_name(backup_uuid)

    def legacy_path(self, backup_uuid: str) -> Path:
        """Pterodactyl Wings' layout."""
        return self.root / f"{backup_uuid}.tar.gz"

    def pelican_path(self, server_uuid: str, backup_uuid: str) -> Path:
        """Pelican Wings' layout."""
        return self.server_dir(server_uuid) / f"{backup_uuid}.tar.gz"

    def find(self, server_uuid: str, backup_uuid: str) -> Path | None:
        """The archive of this backup of this server, if it is on this node."""
        for path in (
            self.path_for(server_uuid, backup_uuid),
            self.pelican_path(server_uuid, backup_uuid),
            self.legacy_path(backup_uuid),
        ):
            if path.is_file():
                return path
        return None

    def exists_anywhere(self, backup_uuid: str) -> bool:
        """Whether any server on this node already has an archive with this backup uuid."""
        if self.legacy_path(backup_uuid).is_file():
            return True
        names = (archive_name(backup_uuid), f"{backup_uuid}.tar.gz")
        try:
            with os.scandir(self.root) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False) and any(
                        (Path(entry.path) / name).is_file() for name in names
                    ):
                        return True
        except FileNotFoundError:
            return False
        return False

    def ensure_server_dir(self, server_uuid: str) -> None:
        self.server_dir(server_uuid).mkdir(mode=0o700, parents=True, exist_ok=True)

    def delete(self, server_uuid: str, backup_uuid: str) -> bool:
        """Remove the archive and its checksum sidecar; False when there was none."""
        path = self.find(server_uuid, backup_uuid)
        if path is None:
            return False
        path.unlink(missing_ok=True)
        for kind in CHECKSUM_TYPES:
            sidecar_path(path, kind).unlink(missing_ok=True)
        return True

    def remove_temporaries(self, server_uuid: str, backup_uuid: str) -> int:
        """Delete temporary files a crashed write of this backup left behind."""
        prefix = f".{archive_name(backup_uuid)}."
        removed = 0
        folder = self.server_dir(server_uuid)
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith(prefix) and entry.name.endswith(".part"):
                        os.unlink(entry.path)
                        removed += 1
        except FileNotFoundError:
            pass
        return removed


class LocalStore(BackupStore):
    """``.tar.gz`` archives with their checksum sidecars on the node's disk."""

    name = "local"

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage

    async def create(self, source: BackupSource) -> Outcome:
        return await source.in_job_thread(self._create)

    def _create(self, source: BackupSource) -> Outcome:
        rules = IgnoreRules.for_server(source.root, source.ignore)
        self.storage.ensure_server_dir(source.server)
        result = archive_to_file(
            source.root,
            self.storage.path_for(source.server, source.backup),
            rules,
            **source.options,
        )
        return Outcome(
            True, result.checksum, result.checksum_type, result.size, skipped=result.unreadable
        )

    def exists(self, server: str, backup: str) -> bool:
        return self.storage.find(server, backup) is not None

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
