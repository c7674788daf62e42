"""Backups into a real restic repository through the daemon's HTTP API: the report, the
download as a .tar.gz, the restore, the ignore rules, deduplication and concurrency."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.restore.restore_helpers import snapshot as tree_state
from tests.support.daemon_helpers import (
    Daemon,
    Node,
    Panel,
    download_claims,
    new_uuid,
    sign,
    wait_until,
)
from tests.support.restic_helpers import (
    dir_bytes,
    listed,
    needs_restic,
    oracle,
    restic_backups,
    restic_version,
    snapshots,
)
from tests.support.s3_helpers import tree_digest
from wingsbak.appkeys import STORES
from wingsbak.archive import IgnoreRules, archive_to_file

pytestmark = needs_restic
MIB = 1024 * 1024


def block_of(d: Daemon) -> dict[str, Any]:
    r = d.cfg.system.backups.restic
    return {"repository": r.repository, "password_file": r.password_file}


def game_tree(root: Path) -> Path:
    """Files, modes, mtimes, a symlink, an empty directory, nested directories."""
    (root / "world" / "region").mkdir(parents=True)
    (root / "plugins" / "conf").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "empty").mkdir()
    (root / "world" / "region" / "r.0.0.mca").write_bytes(os.urandom(300_000))
    (root / "world" / "level.dat").write_bytes(os.urandom(2000))
    (root / "plugins" / "a.jar").write_bytes(b"PK" + os.urandom(50_000))
    (root / "plugins" / "conf" / "a.yml").write_text("enabled: true\n")
    (root / "logs" / "latest.log").write_text("[12:00:00] Done\n" * 2000)
    (root / "start.sh").write_text("#!/bin/sh\nexec java -jar server.jar\n")
    (root / "start.sh").chmod(0o750)
    (root / "server.properties").write_text("motd=hello\n")
    (root / "server.properties").chmod(0o640)
    os.symlink("world/level.dat", root / "level-link")
    for i, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(path, (1_600_000_000 + i * 1000, 1_600_000_000 + i * 1000), follow_symlinks=False)
    return root


async def backup(d: Daemon, panel: Panel, server: str, ignore: str = "") -> dict[str, Any]:
    backup = new_uuid()
    assert (await d.post_backup(server, backup, ignore=ignore))[0] == 202
    report = (await panel.wait_report(backup, timeout=60)).json
    report["uuid"] = backup
    return report


async def download(d: Daemon, server: str, backup: str) -> tuple[int, dict[str, str], bytes]:
    token = sign(download_claims(server, backup))
    async with d.request("GET", "/download/backup", params={"token": token}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def tar_names(data: bytes) -> dict[str, str]:
    """GNU tar's listing of a .tar.gz: name (no trailing '/') -> type letter."""
    done = subprocess.run(["tar", "-tvzf", "-"], input=data, capture_output=True, check=True)
    out: dict[str, str] = {}
    for line in done.stdout.decode().splitlines():
        fields = line.split(None, 5)
        name = fields[5].split(" -> ")[0].rstrip("/")
        out[name] = fields[0][0]
    return out


async def test_report_download_and_restore_of_a_restic_backup(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, **block)
    server = node.server(name=None)
    game_tree(node.data / server)
    original = tree_state(node.data / server)
    report = await backup(d, panel, server)

    assert report["successful"] is True
    assert report["checksum_type"] == "restic"
    assert report["parts"] is None
    (snap,) = snapshots(block["restic"], f"backup:{report['uuid']}")
    assert snap["id"].startswith(report["checksum"])  # restic's own name for it
    assert f"server:{server}" in snap["tags"]
    assert 300_000 < report["size"] < 2 * MIB  # what this backup added to the repository
    assert list(node.backups.rglob("*.tar.gz")) == []  # nothing of it on the node's disk

    # The download: a valid .tar.gz (gzip -t), server-relative names, the tree's contents.
    status, headers, body = await download(d, server, report["uuid"])
    assert status == 200
    name = f"backup-{report['uuid']}.tar.gz"
    assert headers["Content-Disposition"] == f'attachment; filename="{name}"'
    subprocess.run(["gzip", "-t"], input=body, check=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xzf", "-", "-C", str(out)], input=body, check=True)
    assert tree_digest(out) == tree_digest(node.data / server)
    # The same names as a .tar.gz backup of the same tree.
    local = tmp_path / "local.tar.gz"
    archive_to_file(node.data / server, local)
    assert tar_names(body) == tar_names(local.read_bytes())

    # The restore: through the safe extractor, the tree as it was (modes, mtimes, links).
    (node.data / server / "world" / "level.dat").write_bytes(b"griefed")
    (node.data / server / "new-junk").write_text("x")
    status, _ = await d.post_restore(server, report["uuid"], truncate_directory=True)
    assert status == 202
    restored = (await panel.wait_report(report["uuid"], restore=True, timeout=60)).json
    assert restored == {"successful": True}
    assert tree_state(node.data / server) == original


async def test_ignore_rules_choose_the_same_files_as_a_tar_gz_backup(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, **block)
    server = node.server(name=None)
    root = game_tree(node.data / server)
    (root / "logs" / "keep.log").write_text("kept\n")
    (root / "world" / "session.lock").write_text("lock")
    (root / "cache" / "deep").mkdir(parents=True)
    (root / "cache" / "deep" / "x.bin").write_bytes(b"x")
    (root / "a b [1].txt").write_text("odd name")
    (root / ".pteroignore").write_text("*.log\n!keep.log\n/cache/\n")
    ignore = "**/*.lock\nplugins/conf/\n"
    report = await backup(d, panel, server, ignore=ignore)
    assert report["successful"] is True

    local = tmp_path / "local.tar.gz"
    archive_to_file(root, local, IgnoreRules.for_server(root, ignore))
    with tarfile.open(local) as tf:
        expected = {m.name: m.type for m in tf.getmembers()}
    in_snapshot = listed(block["restic"], report["checksum"])
    # Every file and symlink, exactly: the rules are wingsbak's own, never restic's.
    files = {n for n, t in expected.items() if t != tarfile.DIRTYPE}
    assert {n for n, t in in_snapshot.items() if t != "dir"} == files
    assert {"logs/keep.log", "a b [1].txt", ".pteroignore", "level-link"} <= files
    assert not {"logs/latest.log", "world/session.lock", "cache/deep/x.bin"} & files
    # Directories: those of the files, and the empty ones.
    assert {n for n, t in in_snapshot.items() if t == "dir"} <= {
        n for n, t in expected.items() if t == tarfile.DIRTYPE
    }
    assert in_snapshot["empty"] == "dir"


async def test_the_same_files_on_two_servers_are_stored_once(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    d = await start_daemon(remote=panel.url, **restic_backups(tmp_path))
    modpack = {f"mods/m{i}.jar": os.urandom(MIB) for i in range(3)}
    first = await backup(d, panel, node.server(modpack))
    second = await backup(d, panel, node.server({**modpack, "server.properties": "motd=2\n"}))
    assert first["successful"] and second["successful"]
    assert first["size"] > 3 * MIB
    assert second["size"] < MIB // 4  # only the new file and the trees

    # The next backup of the same server adds only what changed.
    server = node.server({"big.bin": os.urandom(2 * MIB)})
    base = await backup(d, panel, server)
    (node.data / server / "logs").mkdir()
    (node.data / server / "logs" / "new.log").write_bytes(os.urandom(4096))
    again = await backup(d, panel, server)
    assert base["size"] > 2 * MIB and again["size"] < 64 * 1024
    (snap,) = snapshots(block_of(d), f"backup:{again['uuid']}")
    assert snap["parent"].startswith(base["checksum"])


async def test_two_servers_back_up_into_one_repository_at_once(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, max_concurrent=2, **block)
    servers = [node.random_server(3 * MIB, files=3) for _ in range(2)]
    reports = await asyncio.gather(*(backup(d, panel, s) for s in servers))
    assert [r["successful"] for r in reports] == [True, True]
    assert len(snapshots(block["restic"])) == 2
    check = oracle(block["restic"], "check")
    assert check.returncode == 0, check.stderr
    for server, report in zip(servers, reports, strict=True):
        status, _, body = await download(d, server, report["uuid"])
        assert status == 200
        with tarfile.open(fileobj=io.BytesIO(body)) as tf:
            names = {m.name for m in tf.getmembers() if m.isfile()}
        root = node.data / server
        assert names == {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def test_the_reported_size_is_what_the_repository_grew_by(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    # 8 MiB of log text, which restic's compression shrinks many times over.
    block = restic_backups(tmp_path)
    d = await start_daemon(remote=panel.url, **block)
    server = node.server(name=None)
    root = node.data / server
    (root / "logs").mkdir(parents=True)
    line = b"[12:00:00] [Server thread/INFO]: Saving chunks for level ServerLevel\n"
    (root / "logs" / "latest.log").write_bytes(line * (8 * MIB // len(line)))
    await wait_until(lambda: d.app[STORES].checks.get("restic") is not None, "the restic check")
    repo = Path(block["restic"]["repository"])
    await wait_until(lambda: (repo / "config").is_file(), "the repository")
    before = dir_bytes(repo)
    report = await backup(d, panel, server)
    grown = dir_bytes(repo) - before
    assert report["successful"] is True
    if restic_version() >= (0, 17):  # data_added_packed: the bytes after compression
        assert 0 < report["size"] <= grown < MIB
    else:  # restic 0.14 says only what it added before compression
        assert report["size"] >= 8 * MIB - len(line) > grown
