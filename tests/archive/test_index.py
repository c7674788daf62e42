"""The index sidecar (archive/index.py): written by the archiver, built in one pass for an
archive without one (GNU tar's as the oracle), tied to its archive, atomic."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from engine_helpers import archive_file

from wingsbak.archive import index as index_mod
from wingsbak.archive.archiver import archive_to_file
from wingsbak.archive.index import ArchiveIndex, FileSource, build_index, index_path


def _tree(root: Path) -> None:
    (root / "world" / "region").mkdir(parents=True)
    (root / "world" / "region" / "r.0.0.mca").write_bytes(os.urandom(6 * 1024 * 1024))
    (root / "server.properties").write_text("motd=hi\n")
    (root / "plugins").mkdir()
    (root / "plugins" / ("long" * 40)).write_text("long name\n")
    (root / "link").symlink_to("server.properties")
    (root / "world" / "level.dat").write_bytes(b"\x0a" * 1000)
    os.chmod(root / "server.properties", 0o640)


def _all(index: ArchiveIndex) -> dict[bytes, tuple[object, ...]]:
    return {
        e.path: (e.kind, e.size, e.mode, e.mtime_ns, e.linkname, e.header_offset, e.data_offset)
        for e in index.below(b"")
    }


def test_archiver_index_matches_gnu_tar_and_a_rebuilt_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root)
    out = tmp_path / "b.tar.gz"
    archive_to_file(root, out, index=True)
    written = ArchiveIndex(index_path(out))
    entries = _all(written)
    # GNU tar's listing is the oracle for what the archive holds.
    listed = subprocess.run(["tar", "-tzf", str(out)], capture_output=True, check=True).stdout
    names = {n.rstrip(b"/") for n in listed.splitlines()}
    assert set(entries) == names
    with tarfile.open(out) as tf:
        for member in tf.getmembers():
            kind, size, mode, mtime_ns, linkname, *_ = entries[member.name.encode()]
            assert kind == ("dir" if member.isdir() else "symlink" if member.issym() else "file")
            assert (size, mode, mtime_ns // 10**9) == (member.size, member.mode, member.mtime)
            assert linkname == member.linkname.encode()
    with open(out, "rb") as f:
        rebuilt = build_index(f)
    index_mod.write_index(tmp_path / "rebuilt.index", rebuilt, index_mod.Stamp(0, 0, "", ""))
    again = ArchiveIndex(tmp_path / "rebuilt.index")
    assert _all(again) == entries
    assert again.members == written.members
    assert len(written.members) >= 2
    with FileSource(out) as source:
        assert ArchiveIndex.open_matching(index_path(out), source) is not None


def test_a_gnu_tar_archive_without_folder_entries_or_with_hardlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "c.txt").write_text("deep\n")
    os.link(src / "a" / "b" / "c.txt", src / "hard")
    out = tmp_path / "legacy.tar.gz"
    # Only the files, no folder entries: the listing must imply a and a/b.
    subprocess.run(
        ["tar", "-czf", str(out), "-C", str(src), "--no-recursion", "a/b/c.txt", "hard"],
        check=True,
    )
    with open(out, "rb") as f:
        data = build_index(f)
    assert len(data.members) == 1  # gzip's single member
    path = tmp_path / "legacy.index"
    index_mod.write_index(path, data, index_mod.Stamp(0, 0, "", ""))
    index = ArchiveIndex(path)
    assert [(e.path, e.kind) for e in index.children(b"")] == [(b"a", "dir"), (b"hard", "file")]
    assert [(e.path, e.kind) for e in index.children(b"a")] == [(b"a/b", "dir")]
    hard = index.get(b"hard")
    target = index.get(b"a/b/c.txt")
    assert hard is not None and target is not None
    assert (hard.size, hard.data_offset) == (target.size, target.data_offset) == (5, 512)


def test_stale_or_corrupt_index_is_not_used(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root)
    out = tmp_path / "b.tar.gz"
    archive_to_file(root, out, index=True)
    saved = index_path(out).read_bytes()
    (root / "new-file").write_text("new")
    archive_to_file(root, out)  # the same name, another archive, the old index beside it
    index_path(out).write_bytes(saved)
    with FileSource(out) as source:
        assert ArchiveIndex.open_matching(index_path(out), source) is None
        index_path(out).write_bytes(b"not sqlite at all" * 100)
        assert ArchiveIndex.open_matching(index_path(out), source) is None


def test_a_failed_index_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    _tree(root)
    out = tmp_path / "b.tar.gz"

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_mod, "_fill", broken)
    result = archive_file(root, out, index=True)  # the backup stands without its index
    assert result.index is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["root", out.name, out.name + ".sha1"]
    )


def test_a_later_entry_of_a_path_replaces_an_earlier_one_and_an_implied_folder(
    tmp_path: Path,
) -> None:
    """As extracting does: a file appended again (``tar -r``) is read as its last version,
    and a folder's own entry after the files in it replaces the folder they implied."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.txt").write_text("first\n")
    plain = tmp_path / "plain.tar"
    tar = ["tar", "-C", str(src), "--no-recursion"]
    subprocess.run([*tar, "-cf", str(plain), "a/f.txt"], check=True)
    (src / "a" / "f.txt").write_text("second, longer\n")
    os.chmod(src / "a", 0o700)
    subprocess.run([*tar, "-rf", str(plain), "a/f.txt", "a"], check=True)
    subprocess.run(["gzip", str(plain)], check=True)
    with open(tmp_path / "plain.tar.gz", "rb") as f:
        data = build_index(f)
    path = tmp_path / "appended.index"
    index_mod.write_index(path, data, index_mod.Stamp(0, 0, "", ""))
    data.close()
    index = ArchiveIndex(path)
    assert [(e.path, e.kind, e.mode) for e in index.children(b"")] == [(b"a", "dir", 0o700)]
    (f,) = index.children(b"a")
    assert (f.path, f.size) == (b"a/f.txt", len("second, longer\n"))
    assert f.header_offset == 1024  # the second copy, after the first's header and block


def test_gathering_an_index_takes_the_same_memory_for_many_entries(tmp_path: Path) -> None:
    """The entries are spooled to disk as they come: 200,000 of them (a modded server's
    worth) hold no more of Python's memory than a few thousand, where a list of them would
    take tens of MiB."""
    import tracemalloc

    data = index_mod.IndexData()
    tracemalloc.start()
    try:
        for i in range(200_000):
            data.add(b"plugins/data%03d" % (i // 1000), b"player%06d.json" % i, "file",
                     2048, 0o644, 0, b"", i * 3072, i * 3072 + 512)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak
    out = tmp_path / "many.index"
    index_mod.write_index(out, data, index_mod.Stamp(0, 0, "", ""))
    data.close()
    index = ArchiveIndex(out)
    folders = [e.path for e in index.children(b"plugins")]
    assert folders[:2] == [b"plugins/data000", b"plugins/data001"] and len(folders) == 200
    assert len(index.children(b"plugins/data199")) == 1000


def test_a_spool_that_cannot_be_written_costs_the_index_not_the_backup(tmp_path: Path) -> None:
    """The entries wait in SQLite's temporary folder; where it is full, the backup is made
    all the same and whole (gzip and tar read it), and no index, not even part of one, is
    left beside it (the first browse builds it)."""
    from tests.support.daemon_helpers import mounted_tmpfs

    root = tmp_path / "root"
    for folder in range(5):
        (root / f"d{folder}").mkdir(parents=True)
        for i in range(1000):
            (root / f"d{folder}" / (f"{i:04d}" + "n" * 200)).write_text("x")
    out = tmp_path / "b.tar.gz"
    with mounted_tmpfs(tmp_path / "spool", "64k") as spool:
        done = subprocess.run(
            [sys.executable, "-m", "wingsbak", "archive", str(root), "-o", str(out), "--index"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "SQLITE_TMPDIR": str(spool)},
        )
        assert list(spool.iterdir()) == []
    assert done.returncode == 0, done.stderr
    assert "archive_index_given_up" in done.stderr + done.stdout
    subprocess.run(["gzip", "-t", str(out)], check=True)
    listed = subprocess.run(["tar", "-tzf", str(out)], capture_output=True, check=True).stdout
    assert len(listed.splitlines()) == 5 * 1001
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["b.tar.gz", "b.tar.gz.sha1", "root", "spool"]
