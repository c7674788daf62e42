"""browse/catalog.py: what the file manager is told when a listed backup cannot be opened."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from wingsbak.browse.catalog import Catalog, Unopenable
from wingsbak.browse.model import BackupFolder, Browsable
from wingsbak.browse.tarview import open_local_archive

SERVER = "8d2e6f4c-1c2b-4c55-9a53-0f3b8a6c2d10"
BACKUP = "1f0c8a52-7d4e-4a3b-9c1d-2e5f6a7b8c9d"


class _GoneArchiveStore:
    """A store listing one local archive that is no longer on disk."""

    name = "local"

    def __init__(self, path: Path) -> None:
        self.path = path

    def browsable(self, server: str) -> list[Browsable]:
        folder = BackupFolder(BACKUP, server, datetime(2026, 12, 6, tzinfo=UTC), "wings")
        return [Browsable(folder, lambda: open_local_archive(self.path), "1")]

    def server_of(self, backup: str) -> str | None:
        return SERVER


def test_an_archive_that_cannot_be_opened_is_said_without_the_nodes_paths(
    tmp_path: Path,
) -> None:
    gone = tmp_path / "node-secret-dir" / f"{BACKUP}.tar.gz"
    catalog = Catalog([_GoneArchiveStore(gone)])
    (folder,) = catalog.folders(SERVER)
    with pytest.raises(Unopenable) as caught:
        catalog.view(folder)
    assert "node-secret-dir" not in str(caught.value)
    assert "No such file or directory" in str(caught.value)
