"""The node's bucket under faults: an outage that also refuses the abort of a failed upload,
the start-up sweep of the node's own unfinished uploads, and the daemon killed with -9 after
S3 completed an upload. moto's server through the fault proxy, the real daemon."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid, wait_until
from tests.support.s3_helpers import MIB, FaultProxy, s3_config
from wingsbak.appkeys import STORES
from wingsbak.storage.s3_cleanup import S3Cleanup

CLEANUP_STATE = ".wingsbak-s3-cleanup.json"


def s3_backups(endpoint: str, bucket: str, **over: Any) -> dict[str, Any]:
    """``system.backups`` keys of a node whose wings backups go to its own bucket."""
    return {"store": "s3", "s3": dataclasses.asdict(s3_config(endpoint, bucket, **over))}


def uploads(s3_admin: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def parts_in_bucket(s3_admin: Any, bucket: str) -> int:
    listed = uploads(s3_admin, bucket)
    if not listed:
        return 0
    up = listed[0]
    return len(
        s3_admin.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"]).get("Parts", [])
    )


def object_exists(s3_admin: Any, bucket: str, key: str) -> bool:
    try:
        s3_admin.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False
    return True


def aborts_refused(proxy: FaultProxy) -> int:
    """AbortMultipartUpload requests the outage refused."""
    return sum(1 for r in proxy.plan.refused if r.startswith("DELETE ") and "uploadId=" in r)


async def upload_cut_by_an_outage(
    proxy: FaultProxy, s3_admin: Any, bucket: str, post: Callable[[], Any]
) -> None:
    """Start a backup, and once its first part is in the bucket let S3 refuse everything
    until the daemon has given up on the abort too."""
    await post()
    await wait_until(lambda: parts_in_bucket(s3_admin, bucket) >= 1, "a first part", timeout=30)
    proxy.plan.outage = True
    # PART_ATTEMPTS tries of the abort, after the parts' own tries: about 15 s.
    await wait_until(lambda: aborts_refused(proxy) >= 5, "the abort to be refused", timeout=90)


async def test_an_abort_refused_by_an_outage_is_done_once_s3_answers_again(
    start_daemon: Callable[..., Any],
    panel: Panel,
    node: Node,
    fault_proxy: FaultProxy,
    s3_admin: Any,
    bucket: str,
) -> None:
    d = await start_daemon(
        remote=panel.url, write_limit=2, **s3_backups(fault_proxy.endpoint, bucket)
    )
    server = node.random_server(16 * MIB, files=4)
    backup = new_uuid()

    async def post() -> None:
        assert (await d.post_backup(server, backup))[0] == 202

    await upload_cut_by_an_outage(fault_proxy, s3_admin, bucket, post)
    assert (await panel.wait_report(backup, timeout=30)).json["successful"] is False
    # Still billed: kept on disk until S3 takes the abort.
    assert [u["Key"] for u in uploads(s3_admin, bucket)] == [f"{server}/{backup}.tar.gz"]
    await wait_until(lambda: (node.backups / CLEANUP_STATE).exists(), "the pending abort")
    (pending,) = json.loads((node.backups / CLEANUP_STATE).read_text())
    assert pending["op"] == "abort" and pending["key"] == f"{server}/{backup}.tar.gz"

    fault_proxy.plan.outage = False
    await wait_until(lambda: uploads(s3_admin, bucket) == [], "the abort", timeout=60)
    await wait_until(lambda: not (node.backups / CLEANUP_STATE).exists(), "the state cleared")
    assert d.app[STORES].by_name("s3").storage.cleanup.pending == []


async def test_a_pending_abort_is_done_after_a_restart(
    daemon_process: Callable[..., DaemonProcess],
    panel: Panel,
    node: Node,
    fault_proxy: FaultProxy,
    s3_admin: Any,
    bucket: str,
) -> None:
    proc = daemon_process(
        remote=panel.url, write_limit=2, **s3_backups(fault_proxy.endpoint, bucket)
    )
    await proc.start()
    server = node.random_server(16 * MIB, files=4)
    backup = new_uuid()

    async def post() -> None:
        assert await proc.post_backup(server, backup) == 202

    await upload_cut_by_an_outage(fault_proxy, s3_admin, bucket, post)
    assert (await panel.wait_report(backup, timeout=30)).json["successful"] is False
    await wait_until(lambda: (node.backups / CLEANUP_STATE).exists(), "the pending abort")
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    # The server is gone from the node meanwhile: the start-up sweep of the node's servers
    # cannot claim the upload, only the kept abort can.
    shutil.rmtree(node.data / server)
    fault_proxy.plan.outage = False
    assert len(uploads(s3_admin, bucket)) == 1

    await proc.start()
    await wait_until(lambda: uploads(s3_admin, bucket) == [], "the abort", timeout=60)
    await wait_until(lambda: not (node.backups / CLEANUP_STATE).exists(), "the state cleared")
    assert await proc.stop() == 0, proc.logs()


async def test_the_start_aborts_only_the_nodes_own_unfinished_uploads(
    start_daemon: Callable[..., Any],
    panel: Panel,
    node: Node,
    moto_endpoint: str,
    s3_admin: Any,
    bucket: str,
) -> None:
    # Left by a run that died without a journal entry (or whose recovery could not reach S3).
    server = node.server()
    mine = f"node-a/{server}/{new_uuid()}.tar.gz"
    others = [
        f"node-a/{new_uuid()}/{new_uuid()}.tar.gz",  # a server of another node, same bucket
        f"node-a/{server}/notes.txt",  # not a key this node writes
        f"node-b/{server}/{new_uuid()}.tar.gz",  # under another prefix
        f"{server}/{new_uuid()}.tar.gz",
    ]
    for key in [mine, *others]:
        s3_admin.create_multipart_upload(Bucket=bucket, Key=key)

    d = await start_daemon(remote=panel.url, **s3_backups(moto_endpoint, bucket, prefix="node-a/"))
    await wait_until(lambda: mine not in [u["Key"] for u in uploads(s3_admin, bucket)], "sweep")
    cleanup = d.app[STORES].by_name("s3").storage.cleanup
    await wait_until(lambda: cleanup._thread is None, "the sweep to end")
    assert sorted(u["Key"] for u in uploads(s3_admin, bucket)) == sorted(others)


async def test_a_running_backup_is_not_swept(
    start_daemon: Callable[..., Any],
    panel: Panel,
    node: Node,
    fault_proxy: FaultProxy,
    s3_admin: Any,
    bucket: str,
) -> None:
    # The sweep runs beside the first backups: their uploads are theirs, whatever the
    # clocks say (here as if S3's clock ran an hour behind the node's).
    fault_proxy.plan.delay = 0.5
    d = await start_daemon(remote=panel.url, **s3_backups(fault_proxy.endpoint, bucket))
    cleanup = d.app[STORES].by_name("s3").storage.cleanup
    await wait_until(lambda: d.app[STORES].checks.get("s3") is not None, "the start-up check")
    await wait_until(lambda: not d.app[STORES].checks.get("s3").is_alive(), "the start-up check")
    await wait_until(lambda: cleanup._thread is None, "the start-up sweep")
    cleanup._since = datetime.now(UTC) + timedelta(hours=1)
    server = node.random_server(12 * MIB, files=3)
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    await wait_until(lambda: bool(uploads(s3_admin, bucket)), "the upload to begin")
    with capture_logs() as logs:
        cleanup.start()  # a sweep while the upload runs
        await wait_until(lambda: cleanup._thread is None, "the sweep")
    assert not [e for e in logs if e["event"] == "s3_orphaned_upload_aborted"]
    report = (await panel.wait_report(backup, timeout=60)).json
    assert report["successful"] is True, report
    assert object_exists(s3_admin, bucket, f"{server}/{backup}.tar.gz")


@pytest.mark.parametrize("noted", [True, False], ids=["noted", "journal-not-written"])
async def test_kill_9_after_s3_completed_the_upload(
    daemon_process: Callable[..., DaemonProcess],
    panel: Panel,
    node: Node,
    fault_proxy: FaultProxy,
    s3_admin: Any,
    bucket: str,
    noted: bool,
) -> None:
    proc = daemon_process(remote=panel.url, **s3_backups(fault_proxy.endpoint, bucket))
    await proc.start()
    server = node.random_server(12 * MIB, files=3)
    backup = new_uuid()
    key = f"{server}/{backup}.tar.gz"
    fault_proxy.plan.hold_complete = True
    try:
        assert await proc.post_backup(server, backup) == 202
        # S3 has completed the upload; the daemon has not heard it yet.
        await wait_until(fault_proxy.plan.completed.is_set, "the upload completed", timeout=60)
        assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        fault_proxy.plan.release.set()
    assert panel.reports(backup) == []
    body = s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read()
    journal_path = node.backups / ".wingsbak-journal.json"
    if not noted:  # as when the journal could not be written (a full disk)
        journal = json.loads(journal_path.read_text())
        del journal[backup]["s3_commit"]
        journal_path.write_text(json.dumps(journal))

    fault_proxy.plan = type(fault_proxy.plan)()
    await proc.start()
    report = (await panel.wait_report(backup, timeout=30)).json
    await wait_until(lambda: json.loads(journal_path.read_text()) == {}, "the journal entry gone")
    assert len(panel.reports(backup)) == 1
    if noted:
        assert report["successful"] is True, report
        assert report["checksum"] == hashlib.sha1(body).hexdigest()
        assert report["checksum_type"] == "sha1"
        assert report["size"] == len(body)
        assert object_exists(s3_admin, bucket, key)
    else:
        # Nothing vouches for the object: the backup is reported failed, and the object goes.
        assert report["successful"] is False and report["size"] == 0
        assert not object_exists(s3_admin, bucket, key)
    assert uploads(s3_admin, bucket) == []
    assert await proc.stop() == 0, proc.logs()


def test_a_damaged_state_file_keeps_its_valid_entries(tmp_path: Path) -> None:
    state = tmp_path / CLEANUP_STATE
    state.write_text(
        json.dumps(
            [
                {"op": "abort", "key": "a", "upload_id": "u"},
                {"op": "delete", "key": "b"},
                {"op": "abort", "key": "c"},  # no upload id: dropped
                "junk",
            ]
        )
    )
    cleanup = S3Cleanup(None, "bucket", "", state)
    cleanup._load()
    assert cleanup.pending == [
        {"op": "abort", "key": "a", "upload_id": "u"},
        {"op": "delete", "key": "b"},
    ]
