"""Hostile input of issue 7: ``.pteroignore`` as a symlink to a file outside the root, as a
1 GB sparse file and as a FIFO, through the daemon; and a server tree of many empty files with
a 20-deep chain of symlinks back to the root (the 1,000,000-file run is marked slow and checks
the peak RSS of a child process doing the backup)."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.daemon_helpers import Daemon, Node, Panel, new_uuid

GIB = 1024**3


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    subprocess.run(["gzip", "-t", str(archive)], check=True)
    with tarfile.open(archive) as tf:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tf.getmembers()}


async def backup(
    d: Daemon, panel: Panel, server: str, timeout: float = 60, ignore: str = ""
) -> dict:
    b = new_uuid()
    assert (await d.post_backup(server, b, ignore=ignore))[0] == 202
    report = await asyncio.wait_for(panel.wait_report(b, timeout=timeout), timeout)
    assert report.json["successful"] is True, report.json
    return {"uuid": b, **report.json}


FILES = {"server.properties": "motd=x\n", "world/level.dat": b"\x01" * 64, "logs/latest.log": "x"}


async def test_pteroignore_symlink_to_outside_file_is_not_applied(
    start_daemon, node: Node, panel: Panel, tmp_path: Path
):
    d: Daemon = await start_daemon(remote=panel.url)
    outside = tmp_path / "shadow"
    outside.write_text("*\n!nothing\n")
    server = node.server(FILES)
    (node.data / server / ".pteroignore").symlink_to(outside)
    r = await backup(d, panel, server)
    got = members(node.archive(server, r["uuid"]))
    assert {"server.properties", "world/level.dat", "logs/latest.log"} <= set(got)
    link = got[".pteroignore"]
    assert link.issym() and link.linkname == str(outside)  # stored as a link, never read


async def test_pteroignore_of_1_gb_sparse_fails_the_backup(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url)
    server = node.server(FILES)
    ignore = node.data / server / ".pteroignore"
    with open(ignore, "wb") as f:
        f.write(b"*\n")
        f.truncate(GIB)
    assert ignore.stat().st_blocks * 512 < 1024 * 1024  # sparse: next to nothing on disk
    # Over 1 MiB: neither read whole nor dropped (which would archive what it excludes);
    # the backup fails, naming it (tests/daemon/test_daemon_backup.py checks the log line).
    backup = new_uuid()
    status, _ = await d.post_backup(server, backup)
    assert status == 202
    report = await panel.wait_report(backup)  # the guard: a hang, no timing assertion
    assert report.json["successful"] is False
    assert not node.archive(server, backup).exists()


async def test_pteroignore_fifo_does_not_hang(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url)
    server = node.server(FILES)
    os.mkfifo(node.data / server / ".pteroignore")
    r = await backup(d, panel, server)  # the guard: 60 s, no timing assertion
    got = members(node.archive(server, r["uuid"]))
    assert {"server.properties", "world/level.dat", "logs/latest.log"} <= set(got)
    assert ".pteroignore" not in got  # not a file, directory or symlink: skipped


# -- many files and symlinks back to the root --------------------------------------------


def make_hostile_tree(root: Path, files: int, per_dir: int = 1000) -> int:
    """``files`` empty files and a 20-deep chain d1/d2/.../d20 whose every level links back
    to the root (relative and absolute) and to itself; returns the number of entries."""
    entries = 0
    for start in range(0, files, per_dir):
        folder = root / "many" / f"b{start // per_dir:04d}"
        folder.mkdir(parents=True)
        entries += 1
        for i in range(min(per_dir, files - start)):
            os.close(os.open(folder / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
            entries += 1
    entries += 1  # "many"
    level = root
    for depth in range(1, 21):
        level = level / f"d{depth}"
        level.mkdir()
        (level / "up").symlink_to("../" * depth)
        (level / "root").symlink_to(root)
        (level / "self").symlink_to(".")
        entries += 4
    (root / "loop").symlink_to("loop")
    return entries + 1


async def test_many_empty_files_and_symlink_loops(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url)
    server = new_uuid()
    root = node.data / server
    root.mkdir()
    expected = make_hostile_tree(root, 20_000)
    r = await backup(d, panel, server, timeout=60)
    got = members(node.archive(server, r["uuid"]))
    assert len(got) == expected  # every entry once: nothing followed, nothing twice
    chain = "/".join(f"d{i}" for i in range(1, 21))
    assert got[f"{chain}/up"].issym() and got[f"{chain}/up"].linkname == "../" * 20
    assert got[f"{chain}/root"].issym() and got["d1/self"].linkname == "."
    assert got["loop"].issym()
    assert sum(1 for m in got.values() if m.isfile()) == 20_000
    assert sum(1 for m in got.values() if m.issym()) == 61


CHILD = """
import resource, sys
from wingsbak.archive.archiver import archive_to_file
r = archive_to_file(sys.argv[1], sys.argv[2], progress=lambda p: None)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(r.files, r.size, rss)
"""


@pytest.mark.slow
def test_million_empty_files_in_flat_memory(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    expected = make_hostile_tree(root, 1_000_000)
    archive = tmp_path / "backup.tar.gz"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(archive)], stdout=subprocess.PIPE, text=True
    )
    out, _ = child.communicate(timeout=1800)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert child.returncode == 0
    files, size, maxrss_kib = (float(x) for x in out.split())
    peak_mib = usage.ru_maxrss / 1024  # the largest child so far: this one
    print(  # how long it takes is measured in bench/, not here
        f"\n1,000,000 empty files: {int(files)} entries, archive {size / 1024**2:.1f} MiB, "
        f"child peak RSS {maxrss_kib / 1024:.0f} MiB (RUSAGE_CHILDREN {peak_mib:.0f} MiB)"
    )
    assert int(files) == expected
    assert maxrss_kib / 1024 < 150
    listed = subprocess.run(
        ["tar", "-tzf", str(archive)], check=True, capture_output=True, text=True
    ).stdout.count("\n")
    assert listed == expected
