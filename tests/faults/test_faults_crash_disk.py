"""Faults of issue 7: the daemon killed with -9 in the middle of an S3 direct upload, and the
backup file system filling up (a real tmpfs) during a backup."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.daemon_helpers import (
    Daemon,
    DaemonProcess,
    Node,
    Panel,
    auth,
    mounted_tmpfs,
    new_uuid,
    wait_until,
)
from tests.support.s3_helpers import s3_config
from wingsbak.archive.index import index_path

MIB = 1024 * 1024
PAGE = 4096


def journal(backups: Path) -> dict[str, Any]:
    try:
        return json.loads((backups / ".wingsbak-journal.json").read_text())
    except FileNotFoundError:
        return {}


# -- kill -9 during an S3 direct upload ----------------------------------------------------


async def test_kill_9_during_s3_direct_upload_then_restart(
    daemon_process, node: Node, panel: Panel, moto_endpoint: str, bucket: str, s3_admin: Any
):
    proc: DaemonProcess = daemon_process(
        remote=panel.url,
        write_limit=2,
        store="s3",
        s3=asdict(s3_config(moto_endpoint, bucket, concurrency=2)),
    )
    await proc.start()
    server = node.random_server(16 * MIB, files=4)
    backup = new_uuid()
    key = f"{server}/{backup}.tar.gz"
    # Into the node's own bucket: a node-side (wings) backup to the panel.
    assert await proc.post_backup(server, backup) == 202

    def uploads() -> list[dict[str, Any]]:
        return s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    def parts_sent() -> int:
        ups = uploads()
        if not ups:
            return 0
        listed = s3_admin.list_parts(Bucket=bucket, Key=key, UploadId=ups[0]["UploadId"])
        return len(listed.get("Parts", []))

    # Mid-upload: the multipart upload exists and at least one 5 MiB part is in the bucket.
    await wait_until(lambda: parts_sent() >= 1, "a first uploaded part", timeout=30)
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    assert [u["Key"] for u in uploads()] == [key]
    assert journal(node.backups)[backup]["store"] == "s3"
    assert panel.reports(backup) == []

    await proc.start()
    report = await panel.wait_report(backup)
    assert report.json["successful"] is False
    assert report.json["size"] == 0
    await wait_until(lambda: uploads() == [], "the upload to be aborted", timeout=10)
    with pytest.raises(ClientError) as err:
        s3_admin.head_object(Bucket=bucket, Key=key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3_admin.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert journal(node.backups) == {}
    assert not node.temporaries()
    await asyncio.sleep(0.3)
    assert len(panel.reports(backup)) == 1
    assert await proc.stop() == 0, proc.logs()


# -- the disk fills up -----------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards; skipped where mounting is not permitted."""
    with mounted_tmpfs(tmp_path / "small", "4m", ",mode=0700") as mnt:
        yield mnt


def on_small_fs(small: Path) -> Callable[[dict[str, Any]], None]:
    def hook(raw: dict[str, Any]) -> None:
        raw["system"]["backup_directory"] = str(small)

    return hook


def leftovers(small: Path) -> list[str]:
    return sorted(str(p.relative_to(small)) for p in small.rglob("*") if p.is_file())


async def test_disk_full_during_backup(start_daemon, node: Node, panel: Panel, small_fs: Path):
    d: Daemon = await start_daemon(remote=panel.url, config_hook=on_small_fs(small_fs))
    big = node.random_server(10 * MIB, files=5)
    backup = new_uuid()
    assert (await d.post_backup(big, backup))[0] == 202
    report = await panel.wait_report(backup, timeout=30)
    assert report.json["successful"] is False
    assert report.json["checksum"] == "" and report.json["size"] == 0
    assert not (small_fs / big / f"{backup}.tar.gz").exists()
    assert list(small_fs.rglob("*.part")) == []
    await d.wait_idle()

    # Still serving, and the space of the failed attempt was given back: a small backup fits.
    async with d.request("GET", "/healthz") as r:
        assert r.status == 200
    small = node.server({"server.properties": "motd=still here\n"})
    second = new_uuid()
    assert (await d.post_backup(small, second))[0] == 202
    ok = await panel.wait_report(second)
    assert ok.json["successful"] is True
    archive = small_fs / small / f"{second}.tar.gz"
    assert hashlib.sha1(archive.read_bytes()).hexdigest() == ok.json["checksum"]
    assert (await d.system())["jobs"]["failed"] == 1
    assert len(panel.reports(backup)) == 1


def fill(small: Path, free_pages: int) -> None:
    """Leave exactly ``free_pages`` pages of ``small`` free, with one filler file."""
    filler = small / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(small)
    pages = st.f_bavail * st.f_frsize // PAGE - free_pages
    assert pages >= 0
    with open(filler, "wb") as f:
        f.write(b"\xff" * pages * PAGE)
    st = os.statvfs(small)
    assert st.f_bavail * st.f_frsize // PAGE == free_pages


async def test_disk_full_at_every_step_of_the_commit(
    start_daemon, node: Node, panel: Panel, small_fs: Path
):
    """The file system is left with room for everything a backup writes but one page, two
    pages... (the journal, the archive, its sidecar, the outbox): at every fill level the
    report is either successful with the archive and sidecar in place, or failed with no
    archive under the final name and no temporary file; and it arrives exactly once.
    (min_free_space 0: the backups fill the disk to its last page.) The archive's index
    comes last and is optional (a first browse builds a missing one): where only it does not
    fit, the backup succeeds without it, so the sweep starts that many pages lower."""
    d: Daemon = await start_daemon(
        remote=panel.url, config_hook=on_small_fs(small_fs), min_free_space="0"
    )
    server = node.random_server(200 * 1024, files=2)
    # A first backup tells how many pages a successful one takes, all files included.
    st = os.statvfs(small_fs)
    before = st.f_bavail
    first = new_uuid()
    assert (await d.post_backup(server, first))[0] == 202
    assert (await panel.wait_report(first)).json["successful"] is True
    await d.wait_idle()
    needed = before - os.statvfs(small_fs).f_bavail
    index_pages = -(-index_path(small_fs / server / f"{first}.tar.gz").stat().st_size // PAGE)
    async with d.request("DELETE", f"/api/servers/{server}/backup/{first}", headers=auth()) as r:
        assert r.status == 204
    assert needed > 2

    outcomes: dict[int, bool] = {}
    for free in range(max(0, needed - index_pages - 4), needed + 3):
        fill(small_fs, free)
        backup = new_uuid()
        assert (await d.post_backup(server, backup))[0] == 202
        report = await panel.wait_report(backup, timeout=30)
        await d.wait_idle()
        archive = small_fs / server / f"{backup}.tar.gz"
        sidecar = Path(f"{archive}.sha1")
        assert list(small_fs.rglob("*.part")) == [], (free, leftovers(small_fs))
        outcomes[free] = report.json["successful"]
        if report.json["successful"]:
            assert archive.is_file() and sidecar.is_file(), (free, leftovers(small_fs))
            assert hashlib.sha1(archive.read_bytes()).hexdigest() == report.json["checksum"]
            assert sidecar.read_text().split()[0] == report.json["checksum"]
            async with d.request(
                "DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()
            ) as r:
                assert r.status == 204
        else:
            assert not archive.exists(), (free, leftovers(small_fs))
            assert not sidecar.exists(), (free, leftovers(small_fs))
            assert report.json["size"] == 0
        await asyncio.sleep(0.1)
        assert len(panel.reports(backup)) == 1, free
        async with d.request("GET", "/healthz") as r:
            assert r.status == 200
    # The sweep did cross the limit: the tightest level fails, the roomiest succeeds.
    assert outcomes[min(outcomes)] is False and outcomes[max(outcomes)] is True, outcomes
    assert uuid.UUID(first)
