"""S3 backups with the node's own credentials, against moto's S3 server over real HTTP."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3_helpers import (
    MIB,
    SERVER_UUID,
    FaultProxy,
    extract_with_tar,
    s3_config,
    tree_digest,
)
from wingsbak.archive import Cancelled, archive_to_file, write_archive
from wingsbak.storage.bucket import NodeBucket, S3Error, S3NotFound, S3PartSink


def new_uuid() -> str:
    return str(uuid.uuid4())


def no_uploads(s3_admin: Any, bucket: str) -> bool:
    return not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")


def fetch(s3_admin: Any, bucket: str, key: str) -> tuple[bytes, dict[str, Any]]:
    answer = s3_admin.get_object(Bucket=bucket, Key=key)
    return answer["Body"].read(), answer


def test_archive_of_four_parts_round_trips_byte_for_byte(
    moto_endpoint: str, s3_admin: Any, bucket: str, big_tree: Path, tmp_path: Path
) -> None:
    cfg = s3_config(moto_endpoint, bucket, prefix="node-1/", storage_class="STANDARD_IA")
    storage = NodeBucket(cfg)
    backup = new_uuid()
    result = storage.upload_backup(str(big_tree), SERVER_UUID, backup)

    key = f"node-1/{SERVER_UUID}/{backup}.tar.gz"
    data, answer = fetch(s3_admin, bucket, key)
    assert result.size == len(data) > 3 * cfg.part_size
    assert hashlib.sha1(data).hexdigest() == result.checksum
    assert answer["ContentType"] == "application/x-gzip"
    assert answer["StorageClass"] == "STANDARD_IA"
    assert answer["ETag"].endswith('-4"')  # one multipart upload of 4 parts
    assert no_uploads(s3_admin, bucket)
    extract_with_tar(data, tmp_path / "restored")
    assert tree_digest(tmp_path / "restored") == tree_digest(big_tree)


def test_storage_download_link_stream_and_delete(
    moto_endpoint: str, s3_admin: Any, bucket: str, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("alpha\n" * 1000)
    storage = NodeBucket(s3_config(moto_endpoint, bucket))
    backup = new_uuid()
    assert not storage.exists(SERVER_UUID, backup)
    result = storage.upload_backup(str(root), SERVER_UUID, backup)
    assert storage.exists(SERVER_UUID, backup)
    assert storage.size(SERVER_UUID, backup) == result.size

    with urllib.request.urlopen(storage.presigned_download_url(SERVER_UUID, backup)) as resp:
        body = resp.read()
        disposition = resp.headers["Content-Disposition"]
    assert hashlib.sha1(body).hexdigest() == result.checksum
    assert disposition == f'attachment; filename="backup-{backup}.tar.gz"'

    stream = storage.open_stream(SERVER_UUID, backup)
    try:
        assert stream.read() == body
    finally:
        stream.close()

    assert storage.delete(SERVER_UUID, backup) is True
    assert not storage.exists(SERVER_UUID, backup)
    assert storage.delete(SERVER_UUID, backup) is False
    with pytest.raises(S3NotFound):
        storage.open_stream(SERVER_UUID, backup)


def test_identifiers_must_be_uuids_before_any_request(moto_endpoint: str) -> None:
    storage = NodeBucket(s3_config(moto_endpoint, "never-used"))
    with pytest.raises(ValueError):
        storage.key(SERVER_UUID, "../../etc/passwd")
    with pytest.raises(ValueError):
        storage.key(SERVER_UUID.upper(), new_uuid())


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_part_failing_twice_then_succeeding_resends_the_same_bytes(
    fault_proxy: FaultProxy,
    s3_admin: Any,
    bucket: str,
    big_tree: Path,
    tmp_path: Path,
    mode: str,
) -> None:
    fault_proxy.plan.fail_parts = 2
    fault_proxy.plan.mode = mode
    # One part at a time, so that it is part 1 that fails twice.
    storage = NodeBucket(s3_config(fault_proxy.endpoint, bucket, concurrency=1), backoff=0.01)
    backup = new_uuid()
    result = storage.upload_backup(str(big_tree), SERVER_UUID, backup)

    plan = fault_proxy.plan
    assert plan.failed == 2
    assert len(plan.bodies[1]) == 3
    assert len(set(plan.bodies[1])) == 1  # every attempt carried the same bytes
    data, _ = fetch(s3_admin, bucket, f"{SERVER_UUID}/{backup}.tar.gz")
    assert hashlib.sha1(data).hexdigest() == result.checksum
    assert no_uploads(s3_admin, bucket)
    extract_with_tar(data, tmp_path / "restored")
    assert tree_digest(tmp_path / "restored") == tree_digest(big_tree)


def test_a_part_that_keeps_failing_aborts_the_upload(
    fault_proxy: FaultProxy, s3_admin: Any, bucket: str, big_tree: Path
) -> None:
    fault_proxy.plan.fail_parts = 10_000
    storage = NodeBucket(s3_config(fault_proxy.endpoint, bucket), attempts=3, backoff=0.01)
    backup = new_uuid()
    with pytest.raises(S3Error) as caught:
        storage.upload_backup(str(big_tree), SERVER_UUID, backup)
    message = str(caught.value)
    assert "part" in message and "InternalError" in message and "\n" not in message
    assert fault_proxy.plan.part_requests >= 3
    assert no_uploads(s3_admin, bucket)
    assert not storage.exists(SERVER_UUID, backup)


def test_cancel_midway_aborts_the_upload(
    fault_proxy: FaultProxy, s3_admin: Any, bucket: str, big_tree: Path
) -> None:
    fault_proxy.plan.delay = 0.2
    storage = NodeBucket(s3_config(fault_proxy.endpoint, bucket, concurrency=1))
    cancel = threading.Event()

    def cancel_once_a_part_is_on_its_way() -> None:
        while fault_proxy.plan.part_requests == 0:
            threading.Event().wait(0.005)
        cancel.set()

    threading.Thread(target=cancel_once_a_part_is_on_its_way, daemon=True).start()
    backup = new_uuid()
    with pytest.raises(Cancelled):
        storage.upload_backup(str(big_tree), SERVER_UUID, backup, cancel=cancel)
    assert fault_proxy.plan.part_requests < 4  # stopped before the whole archive was sent
    assert no_uploads(s3_admin, bucket)
    assert not storage.exists(SERVER_UUID, backup)


def test_parts_in_flight_stay_bounded_by_concurrency(
    fault_proxy: FaultProxy, s3_admin: Any, bucket: str, big_tree: Path
) -> None:
    # A slow link, so that the compressor outruns the uploads and ``write`` has to wait.
    # (Peak RSS against (concurrency + 2) x part_size is measured by bench/s3.py, in a process
    # of its own: here the proxy shares the process.)
    fault_proxy.plan.delay = 0.3
    cfg = s3_config(fault_proxy.endpoint, bucket, concurrency=2)
    storage = NodeBucket(cfg)
    with storage.open_sink(SERVER_UUID, new_uuid()) as sink:
        result = write_archive(big_tree, sink)
        sink.complete()
    assert result.size > 3 * cfg.part_size
    assert sink.parts_in_flight_peak == cfg.concurrency  # parallel, and never more
    assert no_uploads(s3_admin, bucket)


def _open_for_writing() -> set[str]:
    """Regular files this process holds open for writing (deleted ones included)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            with open(f"/proc/self/fdinfo/{fd}") as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
            flags = int(fields["flags"].strip(), 8)
        except (OSError, KeyError, ValueError):
            continue
        is_file = os.path.isfile(target) or target.endswith(" (deleted)")
        writable = flags & (os.O_WRONLY | os.O_RDWR)
        if writable and is_file and not target.startswith(("/dev/", "/proc/")):
            found.add(target)
    return found


class DiskWatcher:
    """Polls watched directories and this process's open files while a backup runs."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.before = _open_for_writing()
        self.seen: set[str] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in self.dirs:
                for dirpath, _dirs, files in os.walk(d):
                    self.seen.update(os.path.join(dirpath, f) for f in files)
            self.seen.update(_open_for_writing() - self.before)
            self.polls += 1
            self._stop.wait(0.002)

    def __enter__(self) -> DiskWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_direct_upload_puts_no_archive_on_disk(
    fault_proxy: FaultProxy,
    s3_admin: Any,
    bucket: str,
    big_tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backup_dir = tmp_path / "backups"
    tmp_dir = tmp_path / "tmp"
    backup_dir.mkdir()
    tmp_dir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_dir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_dir))

    # The watcher does see an archive being written to disk...
    with DiskWatcher([backup_dir, tmp_dir]) as control:
        archive_to_file(big_tree, backup_dir / "control.tar.gz")
    assert any(p.endswith(".part") for p in control.seen)
    for p in backup_dir.iterdir():
        p.unlink()

    # ...and sees nothing at all during a direct upload, slowed so that it polls many times.
    fault_proxy.plan.delay = 0.1
    storage = NodeBucket(s3_config(fault_proxy.endpoint, bucket))
    backup = new_uuid()
    with DiskWatcher([backup_dir, tmp_dir]) as watcher:
        result = storage.upload_backup(str(big_tree), SERVER_UUID, backup)
    assert watcher.polls > 20
    assert watcher.seen == set()
    assert list(backup_dir.iterdir()) == [] and list(tmp_dir.iterdir()) == []
    assert storage.size(SERVER_UUID, backup) == result.size


def set_moto_auth(endpoint: str, unauthenticated_requests: bytes) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=unauthenticated_requests,
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    urllib.request.urlopen(request).close()


def test_bad_credentials_fail_with_one_clear_error(
    moto_endpoint: str, s3_admin: Any, bucket: str, tmp_path: Path
) -> None:
    (tmp_path / "f").write_text("x")
    secret = "wJalrXUtnFEMI-very-secret-key"
    cfg = s3_config(
        moto_endpoint, bucket, access_key_id="AKIANOSUCHKEY0000000", secret_access_key=secret
    )
    # From now on moto checks every signature against its IAM users (there are none).
    set_moto_auth(moto_endpoint, b"0")
    try:
        with pytest.raises(S3Error) as caught:
            NodeBucket(cfg, backoff=0.01).upload_backup(str(tmp_path), SERVER_UUID, new_uuid())
    finally:
        set_moto_auth(moto_endpoint, b"inf")
    assert caught.value.code == "InvalidAccessKeyId"
    message = str(caught.value)
    assert "access key id" in message and "\n" not in message and secret not in message
    assert no_uploads(s3_admin, bucket)


def test_missing_bucket_fails_with_one_clear_error(
    moto_endpoint: str, s3_admin: Any, tmp_path: Path
) -> None:
    (tmp_path / "f").write_text("x")
    storage = NodeBucket(s3_config(moto_endpoint, "no-such-bucket-here"), backoff=0.01)
    with pytest.raises(S3Error) as caught:
        storage.upload_backup(str(tmp_path), SERVER_UUID, new_uuid())
    assert caught.value.code == "NoSuchBucket"
    assert str(caught.value) == "S3 bucket 'no-such-bucket-here' does not exist"
    with pytest.raises(S3Error) as checked:
        storage.check()
    assert checked.value.code == "NoSuchBucket"
    assert str(checked.value) == "S3 bucket 'no-such-bucket-here' does not exist"


def test_unreachable_endpoint_fails_with_one_clear_error(tmp_path: Path) -> None:
    from tests.support.s3_helpers import free_port

    (tmp_path / "f").write_text("x")
    cfg = s3_config(f"http://127.0.0.1:{free_port()}", "bucket-x")
    with pytest.raises(S3Error) as caught:
        NodeBucket(cfg, attempts=2, backoff=0.01).upload_backup(
            str(tmp_path), SERVER_UUID, new_uuid()
        )
    assert caught.value.code == "ConnectionError"
    assert "\n" not in str(caught.value)


def test_abort_incomplete_removes_an_upload_left_by_a_crash(
    moto_endpoint: str, s3_admin: Any, bucket: str
) -> None:
    storage = NodeBucket(s3_config(moto_endpoint, bucket))
    backup = new_uuid()
    sink = storage.open_sink(SERVER_UUID, backup)
    sink.write(os.urandom(6 * MIB))  # one part sent, then the "crash": no complete, no abort
    assert not no_uploads(s3_admin, bucket)
    assert storage.abort_incomplete(SERVER_UUID, backup) == 1
    assert no_uploads(s3_admin, bucket)
    sink.abort()  # finds the upload already gone, quietly


def test_parts_grow_every_step_so_that_big_archives_fit_in_10000_parts(
    fault_proxy: FaultProxy, s3_admin: Any, bucket: str
) -> None:
    # With a step of 2 parts instead of 1,000: 5, 5, 10, 10, 15 MiB..., the last one shorter.
    data = os.urandom(47 * MIB)
    key = f"{SERVER_UUID}/{new_uuid()}.tar.gz"
    client = NodeBucket(s3_config(fault_proxy.endpoint, bucket)).client
    with S3PartSink(client, bucket, key, concurrency=2, parts_per_step=2) as sink:
        for i in range(0, len(data), 3 * MIB):  # writes that straddle the part boundaries
            sink.write(data[i : i + 3 * MIB])
        sink.complete()
    sizes = [int(length) // MIB for _n, _u, _t, length, _te in sorted(fault_proxy.plan.seen)]
    assert sizes == [5, 5, 10, 10, 15, 2]
    assert fetch(s3_admin, bucket, key)[0] == data
    assert no_uploads(s3_admin, bucket)


def test_a_lost_create_answer_leaves_no_second_upload_behind(
    fault_proxy: FaultProxy, s3_admin: Any, bucket: str, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("alpha\n" * 1000)
    fault_proxy.plan.lose_create_answers = 1  # moto creates an upload; its answer never comes
    storage = NodeBucket(s3_config(fault_proxy.endpoint, bucket), backoff=0.01)
    backup = new_uuid()
    result = storage.upload_backup(str(tmp_path), SERVER_UUID, backup)
    assert fault_proxy.plan.lose_create_answers == 0
    data, _ = fetch(s3_admin, bucket, f"{SERVER_UUID}/{backup}.tar.gz")
    assert hashlib.sha1(data).hexdigest() == result.checksum
    assert no_uploads(s3_admin, bucket)  # the upload the lost answer named was aborted
