"""A server root that is a symlink (``<data>/<uuid> -> /etc``) or not a directory is refused
by the walk: nothing outside the server is read, and no archive is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_helpers import archive_file
from test_engine_cli import assert_clean_error, wingsbak

from wingsbak.archive import measure_tree
from wingsbak.archive.walk import UnsafeRoot, walk


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir()
    (d / "shadow").write_text("root:$6$secret")
    return d


def test_a_symlinked_root_is_refused(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "server"
    root.symlink_to(outside)
    with pytest.raises(UnsafeRoot, match="the server directory is a symlink"):
        list(walk(root))
    out = tmp_path / "out.tar.gz"
    with pytest.raises(UnsafeRoot, match="symlink"):
        archive_file(root, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc", "server"]
    with pytest.raises(UnsafeRoot):
        measure_tree(root)


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "server"
    root.write_text("not a directory")
    with pytest.raises(UnsafeRoot, match="the server directory is not a directory"):
        archive_file(root, tmp_path / "out.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server"]


def test_a_symlink_to_a_file_is_refused_as_a_symlink(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "server"
    root.symlink_to(outside / "shadow")
    with pytest.raises(UnsafeRoot, match="symlink"):
        list(walk(root))


def test_the_command_line_follows_a_symlink_it_was_given(tmp_path: Path, outside: Path) -> None:
    """``wingsbak archive LINK``: the operator named the link, so it is resolved first, as
    ``tar -C LINK .`` would."""
    link = tmp_path / "link"
    link.symlink_to(outside)
    out = tmp_path / "out.tar.gz"
    proc = wingsbak("archive", str(link), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    missing = wingsbak("archive", str(tmp_path / "nothing"), "-o", str(out))
    assert_clean_error(missing)
