"""Restore driven through the daemon's HTTP API: local archives and download URLs. The daemon,
node and recording panel are the daemon suite's; download URLs come from ``serve`` (conftest.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from restore_helpers import Serve, breaks_half_way, serves

from tests.support.daemon_helpers import Daemon, Node, Panel, new_uuid
from wingsbak.archive.extract import RestoreError, restore_archive_file

SERVER = "7c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"


@pytest.fixture
def root(node: Node) -> Path:
    """The server's directory: a world, a file, an empty directory and a symlink."""
    files: dict[str, bytes | str] = {
        "world/level.dat": os.urandom(200_000),
        "server.properties": "motd=before\n",
    }
    root = node.data / node.server(files, name=SERVER)
    (root / "empty").mkdir()
    os.symlink("world/level.dat", root / "link")
    return root


@pytest.fixture
async def trusting_daemon(start_daemon: Callable[..., Any], panel: Panel) -> Daemon:
    """A daemon that may download restores from 127.0.0.1 (the ``daemon`` fixture's may not)."""
    d: Daemon = await start_daemon(remote=panel.url, restore_host_allowlist=["127.0.0.1"])
    return d


def _snapshot(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode)
            else:
                out[rel] = ("file", st.st_mode, int(st.st_mtime), p.read_bytes())
    return out


async def _backup(daemon: Daemon, panel: Panel) -> str:
    backup = new_uuid()
    status, _ = await daemon.post_backup(SERVER, backup)
    assert status == 202
    report = (await panel.wait_report(backup)).json
    assert report["successful"] is True
    return backup


async def _restore(daemon: Daemon, panel: Panel, backup: str, **body: Any) -> dict[str, Any]:
    """Ask for a restore (202) and return the panel's restore report."""
    status, _ = await daemon.post_restore(SERVER, backup, **body)
    assert status == 202
    report: dict[str, Any] = (await panel.wait_report(backup, restore=True)).json
    return report


async def test_backup_then_truncating_restore_gives_the_same_tree(
    daemon: Daemon, panel: Panel, root: Path
) -> None:
    before = _snapshot(root)
    backup = await _backup(daemon, panel)
    (root / "server.properties").write_text("motd=after\n")
    (root / "added.txt").write_text("new")
    shutil.rmtree(root / "empty")
    report = await _restore(daemon, panel, backup, truncate_directory=True)
    assert report == {"successful": True}
    assert _snapshot(root) == before


async def test_restore_from_a_download_url_and_a_refused_private_url(
    daemon: Daemon, root: Path, serve: Serve, tmp_path: Path
) -> None:
    src = tmp_path / "other"
    (src / "plugins").mkdir(parents=True)
    (src / "plugins" / "a.jar").write_bytes(os.urandom(50_000))
    url = await serve(serves(await _tar_gz(src)))
    backup = new_uuid()
    # 127.0.0.1 is not allowlisted: refused before anything is fetched.
    status, answer = await daemon.post_restore(SERVER, backup, adapter="s3", download_url=url)
    assert status == 400
    assert "download_url" in answer["error"]
    status, _ = await daemon.post_restore(SERVER, backup, adapter="s3")
    assert status == 400
    assert not (root / "plugins").exists()


async def test_restore_of_an_unknown_backup_is_404_and_a_bad_body_400(
    daemon: Daemon, root: Path
) -> None:
    status, _ = await daemon.post_restore(SERVER, new_uuid())
    assert status == 404
    status, _ = await daemon.post_restore(SERVER, new_uuid(), truncate_directory="yes")
    assert status == 400


async def test_a_server_busy_with_a_backup_or_a_restore_refuses_the_other_with_409(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, root: Path
) -> None:
    fast: Daemon = await start_daemon(remote=panel.url)
    kept = await _backup(fast, panel)
    await node.outbox_settled()  # the next daemon shares the node's directories
    (root / "world" / "big.dat").write_bytes(os.urandom(3 * 1024 * 1024))
    # Paced at 1 MiB/s, each job below is still running when the next request comes.
    slow: Daemon = await start_daemon(remote=panel.url, write_limit=1)
    running = new_uuid()
    assert (await slow.post_backup(SERVER, running))[0] == 202
    status, answer = await slow.post_restore(SERVER, kept)
    assert (status, answer["error"]) == (409, "a backup of this server is running or queued")
    assert (await panel.wait_report(running)).json["successful"] is True

    assert (await slow.post_restore(SERVER, running, truncate_directory=True))[0] == 202
    status, answer = await slow.post_restore(SERVER, kept)
    assert (status, answer["error"]) == (409, "the server is already being restored")
    status, answer = await slow.post_backup(SERVER, new_uuid())
    assert (status, answer["error"]) == (409, "the server is being restored")
    assert (await panel.wait_report(running, restore=True)).json == {"successful": True}


async def _tar_gz(src: Path) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "tar", "-czf", "-", "-C", str(src), ".", stdout=asyncio.subprocess.PIPE
    )
    data, _ = await proc.communicate()
    return data


async def test_allowlisted_download_url_restores_and_a_broken_one_reports_failure(
    trusting_daemon: Daemon, panel: Panel, root: Path, serve: Serve, tmp_path: Path
) -> None:
    src = tmp_path / "other"
    (src / "plugins").mkdir(parents=True)
    payload = os.urandom(300_000)
    (src / "plugins" / "a.jar").write_bytes(payload)
    archive = await _tar_gz(src)
    good, broken = new_uuid(), new_uuid()
    report = await _restore(
        trusting_daemon, panel, good, adapter="s3", download_url=await serve(serves(archive))
    )
    assert report == {"successful": True}
    assert (root / "plugins" / "a.jar").read_bytes() == payload
    assert (root / "server.properties").exists()  # no truncate: other files stay
    url = await serve(breaks_half_way(archive))
    report = await _restore(trusting_daemon, panel, broken, adapter="s3", download_url=url)
    assert report == {"successful": False}


async def test_local_archive_not_matching_its_sidecar_restores_nothing(
    daemon: Daemon, panel: Panel, node: Node, root: Path
) -> None:
    backup = await _backup(daemon, panel)
    archive = node.archive(SERVER, backup)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle: the gzip CRC is at the end
    archive.write_bytes(bytes(data))
    (root / "server.properties").write_text("motd=changed since\n")
    before = _snapshot(root)
    report = await _restore(daemon, panel, backup, truncate_directory=True)
    assert report == {"successful": False}
    assert _snapshot(root) == before
    with pytest.raises(RestoreError):  # the engine alone would have failed only at the end
        restore_archive_file(archive, node.root / "scratch")
