"""A safe walk: symlinks stay symlinks, special files are skipped, metadata is kept, and an
excluded directory is never entered."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import archive_bytes, archive_file, gnu_extract, gnu_tar_names, snapshot
from structlog.testing import capture_logs

from wingsbak.archive import IgnoreRules
from wingsbak.archive.archiver import _Archiver
from wingsbak.archive.walk import walk

IS_ROOT = os.geteuid() == 0


def names(data: bytes) -> set[str]:
    return {n.decode() for n in gnu_tar_names(data)}


def test_symlinks_are_stored_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "file").write_text("data")
    links = {
        "to_root": "/",
        "to_etc_passwd": "/etc/passwd",
        "loop_a": "loop_b",
        "loop_b": "loop_a",
        "self": "self",
        "dangling": "no/such/file",
        "sub/up": "..",
        "sub/up2": "../..",
        "c1": ".",
    }
    for i in range(2, 21):  # a chain of 20 links, each pointing at the previous, the first at .
        links[f"c{i}"] = f"c{i - 1}"
    for name, target in links.items():
        os.symlink(target, root / name)

    out = tmp_path / "out.tar.gz"
    result = archive_file(root, out, IgnoreRules())
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"file", "sub", *links}
    for name, target in links.items():
        assert members[name].issym(), name
        assert members[name].linkname == target
    assert members["sub"].isdir()
    assert result.files == len(members)
    assert result.skipped == 0
    assert result.bytes_read == 4  # only "file" was read

    dest = tmp_path / "dest"
    gnu_extract(out, dest)
    assert snapshot(dest) == snapshot(root)


def test_empty_directories_are_archived(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    data, result = archive_bytes(tmp_path)
    assert sorted(gnu_tar_names(data)) == [b"a/", b"a/b/", b"a/b/c/", b"empty/"]
    assert result.files == 4
    archive = tmp_path.parent / (tmp_path.name + ".tar.gz")
    archive.write_bytes(data)
    dest = tmp_path.parent / (tmp_path.name + "-dest")
    gnu_extract(archive, dest)
    assert (dest / "empty").is_dir() and (dest / "a" / "b" / "c").is_dir()


@pytest.fixture
def short_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory, so that a unix socket can be bound by a short relative name."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fifo_socket_and_device_are_skipped(short_cwd: Path) -> None:
    root = short_cwd
    (root / "keep").write_text("k")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock")
    specials = {"fifo", "sock"}
    try:
        os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        specials.add("null")
    except PermissionError:
        pass  # no CAP_MKNOD here: FIFO and socket still cover the path
    try:
        with capture_logs() as logs:
            data, result = archive_bytes(root)
    finally:
        sock.close()
    assert names(data) == {"keep"}
    assert result.skipped == len(specials)
    assert result.files == 1
    skipped = {e["path"] for e in logs if e["event"] == "archive_entry_skipped"}
    assert skipped == specials


def test_excluded_special_files_are_not_counted(short_cwd: Path) -> None:
    os.mkfifo(short_cwd / "fifo.log")
    (short_cwd / "keep").write_text("k")
    data, result = archive_bytes(short_cwd, IgnoreRules(["*.log"]))
    assert names(data) == {"keep"}
    assert result.skipped == 0


def test_modes_mtimes_and_owners_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    spec = {
        "private": (0o600, 1_000_000_000, 1234, 5678),
        "script": (0o751, 1_700_000_000, 0, 0),
        "plain": (0o644, 946_684_800, 1000, 1000),
        # ids past the 7 octal digits of a ustar header need a pax header
        "bigid": (0o640, 1_650_000_000, 3_000_000, 4_000_000),
    }
    for name, (mode, mtime, uid, gid) in spec.items():
        path = root / name
        path.write_text(name)
        path.chmod(mode)
        if IS_ROOT:
            os.chown(path, uid, gid)
        os.utime(path, (mtime, mtime))
    sub = root / "sub"
    sub.mkdir()
    sub.chmod(0o750)
    os.utime(sub, (1_234_567_890, 1_234_567_890))

    out = tmp_path / "out.tar.gz"
    archive_file(root, out)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    for name, (mode, mtime, uid, gid) in spec.items():
        m = members[name]
        assert (m.mode, m.mtime) == (mode, mtime), name
        if IS_ROOT:
            assert (m.uid, m.gid) == (uid, gid), name
        else:
            assert (m.uid, m.gid) == (os.getuid(), os.getgid())
    assert (members["sub"].mode, members["sub"].mtime) == (0o750, 1_234_567_890)
    assert members["sub"].isdir()

    dest = tmp_path / "dest"
    gnu_extract(out, dest)
    assert snapshot(dest) == snapshot(root)
    if IS_ROOT:
        for name, (_, _, uid, gid) in spec.items():
            st = os.lstat(dest / name)
            assert (st.st_uid, st.st_gid) == (uid, gid), name


def test_file_vanishing_between_listing_and_reading(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    buf = io.BytesIO()
    archiver = _Archiver(buf, None, None, [0])
    with capture_logs() as logs:
        for entry in walk(tmp_path):
            if entry.relpath == "b":
                (tmp_path / "b").unlink()
            archiver.add(entry)
    buf.write(bytes(1024))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        archived = sorted(tar.getnames())
    assert archived == ["a", "c"]
    assert archiver.files == len(archived)
    assert archiver.skipped == 0
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


# Pruning. Running as root, a chmod 000 directory can still be listed, so the walk runs in a
# child process that drops to "nobody" (after a warm-up run as root has imported everything,
# since the interpreter lives under /root); then entering the unreadable directory fails and
# counts as skipped. The control run without the rule shows that it does.
_CHILD = """
import json, os, sys, tempfile
from wingsbak.archive import IgnoreRules, write_archive
class Null:
    def write(self, data):
        return len(data)
with tempfile.TemporaryDirectory() as warm:
    open(os.path.join(warm, "f"), "w").close()
    write_archive(warm, Null(), IgnoreRules(["x/", "!y"]))
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
r = write_archive(sys.argv[1], Null(), IgnoreRules(sys.argv[2:]), allow_unreadable=True)
print(json.dumps({"files": r.files, "skipped": r.skipped}))
"""


def run_unprivileged(root: Path, rules: list[str]) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), *rules],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # warnings are logged before it


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wingsbak-prune-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        shutil.rmtree(path)


@pytest.mark.parametrize(
    ("rules", "locked"),
    [
        (["node_modules/"], "node_modules"),
        (["/cache"], "cache"),
        (["logs/*", "!logs/keep.log"], "logs/old"),
        (["**/tmp/", "!**/tmp/x"], "world/tmp"),
        (["deep/**/"], "deep/a"),
    ],
)
def test_excluded_directory_is_never_entered(
    world_readable_dir: Path, rules: list[str], locked: str
) -> None:
    root = world_readable_dir / "root"
    for d in ("node_modules", "cache", "logs/old", "world/tmp", "deep/a"):
        (root / d).mkdir(parents=True)
        for i in range(3):
            (root / d / f"f{i}").write_text("x")
    (root / "logs" / "keep.log").write_text("keep")
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    (root / locked).chmod(0o000)

    control = run_unprivileged(root, [])
    assert control["skipped"] == 1  # entering the locked directory fails...

    pruned = run_unprivileged(root, rules)
    assert pruned["skipped"] == 0  # ...so with the rule it was never entered


def test_walk_does_not_leave_the_root_through_a_swapped_directory(tmp_path: Path) -> None:
    """A directory replaced by a symlink to outside while the walk runs is not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "inner").write_text("inner")
    (root / "z").write_text("z")
    seen: list[str] = []
    lock = threading.Lock()
    with lock:
        for entry in walk(root):
            seen.append(entry.relpath)
            if entry.relpath == "d":
                # The walk has opened d already; swap the *name* to a symlink.
                os.rename(root / "d", tmp_path / "d-moved")
                os.symlink(outside, root / "d")
    assert "d/secret" not in seen
    assert not any("secret" in s for s in seen)
