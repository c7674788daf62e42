"""Local (``wings`` adapter) backups: ``<backup_directory>/<server>/backup-<uuid>.tar.gz``.

One folder per server (as Pelican does) so a backup can only be found through the server it
belongs to. Archives laid out the way Pterodactyl Wings does (``<backup_directory>/<uuid>.tar.gz``)
and the way Pelican Wings does (``<backup_directory>/<server>/<uuid>.tar.gz``, pelican-dev/wings
090841d ``server/backup/backup.go``, ``Path``) are found too, so wingsbak can take over a node
that already has backups: download, restore, delete and the duplicate check see all three.
"""

from __future__ import annotations

import os
from pathlib import Path

from wingsbak.archive.sink import sidecar_path

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
