"""A truncating restore deletes nothing until the source has proved readable (the daemon's
sidecar check of local archives is in test_restore_daemon.py)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from restore_helpers import snapshot

from wingsbak.archive.extract import RestoreError, extract_archive


def _server_tree(root: Path) -> None:
    (root / "world").mkdir(parents=True)
    (root / "world" / "level.dat").write_bytes(os.urandom(5000))
    (root / "server.properties").write_text("motd=keep me\n")


@pytest.mark.parametrize(
    "source",
    [
        b"",  # an empty download
        b"<html>not found</html>",  # not gzip at all
        gzip.compress(b"this is not a tar archive, only text" * 100),  # gzip, not tar
        gzip.compress(os.urandom(4096))[:200],  # cut inside the first block
    ],
    ids=["empty", "html", "gzip-not-tar", "cut"],
)
def test_truncate_keeps_the_files_when_the_source_is_unreadable(
    tmp_path: Path, source: bytes
) -> None:
    root = tmp_path / "server"
    _server_tree(root)
    before = snapshot(root)
    with pytest.raises(RestoreError):
        extract_archive(io.BytesIO(source), root, truncate=True)
    assert snapshot(root) == before


def test_an_empty_but_valid_archive_still_truncates(tmp_path: Path) -> None:
    root = tmp_path / "server"
    _server_tree(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz"):
        pass
    buf.seek(0)
    extract_archive(buf, root, truncate=True)
    assert list(root.iterdir()) == []
