"""A slow restore source cannot hold a restore, nor a stopping daemon: a cancel or the overall
deadline ends even a read that gets one byte a second, the server is left as it was, and
nothing is written after the failure report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from restore_helpers import Serve, restore_leftovers, snapshot, trickles

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid, wait_until
from wingsbak.archive import archive_to_file
from wingsbak.archive.extract import Cancelled, extract_archive
from wingsbak.config import ConfigError, parse_config
from wingsbak.download_source import DownloadError, GuardedStream, open_restore_stream

SERVER = "9d8c7b6a-5f4e-4d3c-8b2a-190817263544"
MIB = 1024 * 1024


def archive_bytes(tmp_path: Path, size: int = 2 * MIB) -> bytes:
    src = tmp_path / "src"
    src.mkdir()
    (src / "world.mca").write_bytes(os.urandom(size))
    out = tmp_path / "a.tar.gz"
    archive_to_file(src, out)
    return out.read_bytes()


def server_tree(root: Path) -> None:
    (root / "world").mkdir(parents=True)
    (root / "world" / "level.dat").write_bytes(os.urandom(100_000))
    (root / "server.properties").write_text("motd=before\n")


def restore_in_thread(url: str, dest: Path, **options: Any) -> asyncio.Future[Any]:
    """The daemon's way: the download opened, then read through its guard."""

    def run() -> Any:
        source = open_restore_stream(url, ["127.0.0.1"], timeout=30)
        with contextlib.closing(GuardedStream(source, source.abort, **options)) as stream:
            return extract_archive(stream, dest, truncate=True, cancel=options.get("cancel"))

    return asyncio.get_running_loop().run_in_executor(None, run)


async def test_the_deadline_ends_a_trickling_download(serve: Serve, tmp_path: Path) -> None:
    body = archive_bytes(tmp_path)
    handler, sent = trickles(body, len(body) // 2)
    root = tmp_path / "server"
    server_tree(root)
    before = snapshot(root)
    job = restore_in_thread(await serve(handler), root, deadline=1.0)
    with pytest.raises(DownloadError, match="restore_deadline"):
        await asyncio.wait_for(job, 20)
    assert sent.is_set()
    assert snapshot(root) == before
    assert restore_leftovers(root) == []


async def test_a_cancel_ends_a_trickling_download(serve: Serve, tmp_path: Path) -> None:
    body = archive_bytes(tmp_path)
    handler, sent = trickles(body, len(body) // 2)
    root = tmp_path / "server"
    server_tree(root)
    before = snapshot(root)
    cancel = threading.Event()
    job = restore_in_thread(await serve(handler), root, cancel=cancel)
    await asyncio.wait_for(sent.wait(), 10)
    await asyncio.sleep(0.5)  # the restore is now waiting inside a read
    cancel.set()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(job, 20)
    assert snapshot(root) == before
    assert restore_leftovers(root) == []


async def sigterm_ends_the_restore(
    proc: DaemonProcess,
    panel: Panel,
    root: Path,
    started: Callable[[], bool],
    backup: str = "",
    **body: Any,
) -> None:
    """Start a truncating restore of ``root``'s server, wait for ``started``, stop the daemon:
    it exits 0 (the grace, 0.5 s here, and the cancel wait end long before any slow source
    would), the panel hears of a failure, and the server is as it was."""
    before = snapshot(root)
    await proc.start()
    backup = backup or new_uuid()
    assert await proc.post_restore(SERVER, backup, **body) == 202
    await wait_until(started, "the restore to start")
    await asyncio.sleep(0.5)  # inside a read, or paced by the write limit
    assert await proc.stop(signal.SIGTERM, timeout=30) == 0
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": False}
    assert snapshot(root) == before
    assert restore_leftovers(root) == []


async def test_sigterm_during_a_one_byte_a_second_download_stops_the_daemon(
    daemon_process: Any, node: Node, panel: Panel, serve: Serve, tmp_path: Path
) -> None:
    root = node.data / node.server({"server.properties": "motd=before\n"}, name=SERVER)
    server_tree(root / "more")
    body = archive_bytes(tmp_path)
    handler, sent = trickles(body, len(body) // 2)
    url = await serve(handler)
    proc: DaemonProcess = daemon_process(remote=panel.url, restore_host_allowlist=["127.0.0.1"])
    await sigterm_ends_the_restore(
        proc, panel, root, sent.is_set, adapter="s3", download_url=url
    )
    assert "restore_cancelled" in proc.logs()


async def test_sigterm_during_a_one_byte_a_second_s3_body_stops_the_daemon(
    daemon_process: Any, node: Node, panel: Panel, serve: Serve, tmp_path: Path
) -> None:
    """The node's own S3 (a stand-in that answers every GetObject with the trickle): the
    body's socket is shut down under the read on a stop."""
    root = node.data / node.server({"server.properties": "motd=before\n"}, name=SERVER)
    body = archive_bytes(tmp_path)
    handler, sent = trickles(body, len(body) // 2)
    endpoint = (await serve(handler)).rsplit("/", 1)[0]
    s3 = {
        "bucket": "backups",
        "endpoint": endpoint,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "path_style": True,
    }
    proc: DaemonProcess = daemon_process(remote=panel.url, s3=s3)
    await sigterm_ends_the_restore(proc, panel, root, sent.is_set, adapter="s3")


async def test_a_stop_past_the_grace_leaves_a_truncating_restore_undone(
    daemon_process: Any, node: Node, panel: Panel, tmp_path: Path
) -> None:
    root = node.data / node.server({"server.properties": "motd=before\n"}, name=SERVER)
    server_tree(root / "more")
    backup = new_uuid()
    archive = node.archive(SERVER, backup)
    archive.parent.mkdir(parents=True)
    archive.write_bytes(archive_bytes(tmp_path, 6 * MIB))
    proc: DaemonProcess = daemon_process(remote=panel.url, write_limit=1)  # 6 s of writing
    await sigterm_ends_the_restore(
        proc, panel, root, lambda: restore_leftovers(root) != [], backup=backup
    )


@pytest.mark.parametrize("key", ["restore_idle_timeout", "restore_deadline"])
def test_the_timeouts_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError, match=f"system.backups.{key}"):
        parse_config({"system": {"backups": {key: 0}}})
    cfg = parse_config({"system": {"backups": {key: 5}}})
    assert getattr(cfg.system.backups, key) == 5.0
