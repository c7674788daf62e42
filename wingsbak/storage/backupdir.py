"""The node's backup directory (the ``local`` store's, :mod:`wingsbak.storage.local`): local
(``wings`` adapter) backups, named and placed as the fronted Wings names its own
(``<archive>``: Wings' name of a backup's archive, ``<earlier>``: wingsbak's earlier one, both
built by :mod:`wingsbak.archive.codecs`): Pelican Wings' ``<backup_directory>/<server>/<archive>``
(pelican-dev/wings 090841d ``server/backup/backup.go`` ``Path``), Pterodactyl Wings'
``<backup_directory>/<archive>`` (pterodactyl/wings ``server/backup/backup.go``); standalone,
Pelican's. Wings' transfers and server deletion then treat them as Wings' own (Pelican streams
``<server>/<archive>`` to the new node and removes ``<server>/`` with the server), and without
wingsbak Wings serves them. The checksum sidecar (``<archive>.sha1``) and the temporary name
(``.<archive>.<random>.part``) sit beside the archive.

Pterodactyl's flat name holds no server, so the server of each archive wingsbak writes there
is recorded (:class:`ServerRecord`) before the archive takes its name, and a flat archive
recorded for another server is never found for this one. A flat archive with no record (one
Pterodactyl Wings wrote itself) is found by its uuid alone, as Pterodactyl Wings finds it.
Archives wingsbak wrote before (``<server>/<earlier>``) and those of either Wings stay found
for download, restore, delete and the duplicate check.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Protocol

from wingsbak import failpoint
from wingsbak.archive.atomic import fsync_dir
from wingsbak.archive.checksum import read_sidecar, sidecar_path, write_sidecar
from wingsbak.archive.codecs import EARLIER_PREFIX, GZIP, archive_name, earlier_archive_name
from wingsbak.archive.index import index_path
from wingsbak.config import PELICAN, PTERODACTYL
from wingsbak.formats import CHECKSUM_TYPES
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic
from wingsbak.uuids import UUID_PATTERN

log = get_logger(__name__)

RECORD_NAME = ".wingsbak-backup-servers.json"


class ServerRecord:
    """Which server each archive in Pterodactyl's flat layout belongs to: one JSON file
    (backup uuid -> server uuid), rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._servers: dict[str, str] | None = None

    def _loaded(self) -> dict[str, str]:
        if self._servers is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                data = {}
            except (OSError, ValueError) as exc:
                # Not guessed: an unreadable record must not let a flat archive be found for
                # any server. It fails the request; the file is the operator's to mend.
                problem = f"the record of backups' servers {self.path} is unreadable: {exc}"
                raise OSError(problem) from exc
            self._servers = {
                str(k): str(v) for k, v in (data.items() if isinstance(data, dict) else ())
            }
        return self._servers

    def server_of(self, backup: str) -> str | None:
        with self._lock:
            return self._loaded().get(backup)

    def note(self, backup: str, server: str) -> None:
        """On disk when it returns."""
        with self._lock:
            servers = self._loaded()
            if servers.get(backup) == server:
                return
            write_json_atomic(self.path, {**servers, backup: server})
            servers[backup] = server

    def forget(self, backup: str) -> None:
        with self._lock:
            servers = self._loaded()
            if backup not in servers:
                return
            rest = {k: v for k, v in servers.items() if k != backup}
            write_json_atomic(self.path, rest)
            self._servers = rest


class Flavour(Protocol):
    """How new archives are laid out: as the Wings behind the node lays out its own
    (wingsbak.wings.flavour.WingsFlavour)."""

    def layout(self) -> str: ...

    async def for_new_backup(self) -> str: ...


class Standalone:
    """No Wings behind the node: Pelican's layout."""

    def layout(self) -> str:
        return PELICAN

    async def for_new_backup(self) -> str:
        return PELICAN


class BackupDirectory:
    def __init__(self, directory: str | os.PathLike[str], flavour: Flavour | None = None) -> None:
        self.root = Path(directory)
        self.flavour = flavour if flavour is not None else Standalone()
        self.servers = ServerRecord(self.root / RECORD_NAME)

    def server_dir(self, server_uuid: str) -> Path:
        return self.root / server_uuid

    def path_for(self, server_uuid: str, backup_uuid: str, layout: str | None = None) -> Path:
        """Where a new archive of this backup is written (identifiers already validated):
        the fronted Wings' own place for it."""
        if (layout or self.flavour.layout()) == PTERODACTYL:
            return self.flat_path(backup_uuid)
        return self.pelican_path(server_uuid, backup_uuid)

    def flat_path(self, backup_uuid: str) -> Path:
        """Pterodactyl Wings' layout."""
        return self.root / archive_name(backup_uuid)

    def pelican_path(self, server_uuid: str, backup_uuid: str) -> Path:
        """Pelican Wings' layout (and standalone wingsbak's)."""
        return self.server_dir(server_uuid) / archive_name(backup_uuid)

    def old_path(self, server_uuid: str, backup_uuid: str) -> Path:
        """wingsbak's own earlier layout."""
        return self.server_dir(server_uuid) / earlier_archive_name(backup_uuid)

    def find(self, server_uuid: str, backup_uuid: str) -> Path | None:
        """The archive of this backup of this server, if it is on this node."""
        for path in (
            self.pelican_path(server_uuid, backup_uuid),
            self.old_path(server_uuid, backup_uuid),
        ):
            if path.is_file():
                return path
        flat = self.flat_path(backup_uuid)
        if not flat.is_file():
            return None
        owner = self.servers.server_of(backup_uuid)
        if owner is not None and owner != server_uuid:
            log.warning(
                "backup_of_another_server", server=server_uuid, backup=backup_uuid, owner=owner
            )
            return None
        return flat

    def backups_of(self, server_uuid: str) -> list[tuple[str, Path]]:
        """The server's archives (uuid, path): in its folder under either name, and flat ones
        recorded for it (a flat archive with no record names no server, and is not listed)."""
        found: dict[str, Path] = {}
        suffix = re.escape(GZIP.suffix)
        earlier = re.compile(rf"^{re.escape(EARLIER_PREFIX)}({UUID_PATTERN}){suffix}$")
        named = re.compile(rf"^({UUID_PATTERN}){suffix}$")
        places = ((self.server_dir(server_uuid), (earlier, named)), (self.root, (named,)))
        for folder, patterns in places:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                m = next((m for p in patterns if (m := p.match(entry.name))), None)
                if m is None or not entry.is_file(follow_symlinks=False):
                    continue
                flat = folder == self.root
                if flat and self.servers.server_of(m.group(1)) != server_uuid:
                    continue
                found[m.group(1)] = Path(entry.path)  # Wings' name after wingsbak's earlier one
        return sorted(found.items())

    def server_of(self, backup_uuid: str) -> str | None:
        """The server folder holding this backup's archive, or the server recorded for a flat
        one (None for a flat archive Wings wrote itself)."""
        folder = self._server_folder_of(backup_uuid)
        if folder is not None or not self.flat_path(backup_uuid).is_file():
            return folder
        return self.servers.server_of(backup_uuid)

    def _server_folder_of(self, backup_uuid: str) -> str | None:
        names = (archive_name(backup_uuid), earlier_archive_name(backup_uuid))
        try:
            with os.scandir(self.root) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False) and any(
                        (Path(entry.path) / name).is_file() for name in names
                    ):
                        return entry.name
        except FileNotFoundError:
            return None
        return None

    def exists_anywhere(self, backup_uuid: str) -> bool:
        """Whether any server on this node already has an archive with this backup uuid."""
        flat = self.flat_path(backup_uuid).is_file()
        return flat or self._server_folder_of(backup_uuid) is not None

    def ensure_server_dir(self, server_uuid: str) -> None:
        self.server_dir(server_uuid).mkdir(mode=0o700, parents=True, exist_ok=True)

    def prepare(self, server_uuid: str, backup_uuid: str, layout: str) -> Path:
        """Where this backup's archive goes, its folder made. In the flat layout its server
        is recorded first: an archive under its final name always names its server."""
        path = self.path_for(server_uuid, backup_uuid, layout)
        if path.parent == self.root:
            self.servers.note(backup_uuid, server_uuid)
        else:
            self.ensure_server_dir(server_uuid)
        return path

    def delete(self, server_uuid: str, backup_uuid: str) -> bool:
        """Remove the archive and its checksum sidecar; False when there was none."""
        path = self.find(server_uuid, backup_uuid)
        if path is None:
            return False
        path.unlink(missing_ok=True)
        index_path(path).unlink(missing_ok=True)
        for kind in CHECKSUM_TYPES:
            sidecar_path(path, kind).unlink(missing_ok=True)
        if path.parent == self.root:
            self.servers.forget(backup_uuid)
        return True

    def forget_unwritten(self, server_uuid: str, backup_uuid: str) -> None:
        """A flat backup that never got its archive: its record goes too."""
        if not self.flat_path(backup_uuid).exists() and (
            self.servers.server_of(backup_uuid) == server_uuid
        ):
            self.servers.forget(backup_uuid)

    def remove_temporaries(self, server_uuid: str, backup_uuid: str) -> int:
        """Delete temporary files a crashed write of this backup left behind, in any layout."""
        names = (earlier_archive_name(backup_uuid), archive_name(backup_uuid))
        prefixes = tuple(f".{name}." for name in names)
        removed = 0
        for folder in (self.server_dir(server_uuid), self.root):
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.name.startswith(prefixes) and entry.name.endswith(".part"):
                            os.unlink(entry.path)
                            removed += 1
            except FileNotFoundError:
                pass
        return removed

    def rename_to_wings_names(self, server_uuid: str) -> int:
        """Give the server's archives in wingsbak's earlier layout (their earlier name) Wings'
        name, so that Pelican's transfer carries them. Their sidecar is written under
        the new name first: a crash at any step leaves each archive whole and found."""
        renamed = 0
        folder = self.server_dir(server_uuid)
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return 0
        for name in names:
            stem, dot, kind = name.rpartition(".")
            if name.startswith(EARLIER_PREFIX) and dot and kind in CHECKSUM_TYPES:
                # The sidecar of an archive renamed by a run that died before removing it.
                backup = stem.removeprefix(EARLIER_PREFIX).removesuffix(GZIP.suffix)
                if not (folder / stem).exists() and (folder / archive_name(backup)).is_file():
                    (folder / name).unlink(missing_ok=True)
                continue
            if not (name.startswith(EARLIER_PREFIX) and name.endswith(GZIP.suffix)):
                continue
            backup = name.removeprefix(EARLIER_PREFIX).removesuffix(GZIP.suffix)
            old, new = folder / name, folder / archive_name(backup)
            if not old.is_file() or new.exists():
                continue
            sidecar = read_sidecar(old)
            if sidecar is not None:
                write_sidecar(new, sidecar[1], sidecar[0])
            failpoint.hit("rename-sidecar-written")
            os.replace(old, new)
            fsync_dir(folder)
            failpoint.hit("rename-archive-renamed")
            for kind in CHECKSUM_TYPES:
                sidecar_path(old, kind).unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):  # a first browse's, still valid
                os.replace(index_path(old), index_path(new))
            renamed += 1
        return renamed

