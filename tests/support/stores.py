"""The stores the store suite (tests/storage/test_store_suite.py) runs, built in one place, so
that a renamed store class or a new way of assembling the stores changes this file only.

``Where`` says where one store keeps its backups; it is plain JSON, so that a child process
builds the very same store (``python -m tests.support.stores create ...``) and can be killed
with SIGKILL in the middle of a backup.

Also the oracles of what a store holds for one backup, read around the store rather than
through it: the files under the node's backup folder, the bucket's objects and unfinished
multipart uploads (boto3 straight to moto), the repository's snapshots (the restic CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.panel_standin import NODE_TOKEN, TOKEN_ID
from tests.support.restic_helpers import snapshots
from tests.support.s3_helpers import admin_client, s3_config
from wingsbak import failpoint
from wingsbak.archive.archiver import ArchiveProgress
from wingsbak.archive.options import ArchiveOptions
from wingsbak.panel import PanelClient
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.storage.base import BackupSource, BackupStore, Outcome
from wingsbak.storage.bucket import NodeBucket, S3Error
from wingsbak.storage.local import LocalStore
from wingsbak.storage.presigned import PresignedStore, PresignedUploadError
from wingsbak.storage.restic import ResticConfig, ResticError, ResticStore
from wingsbak.storage.s3 import NodeBucketStore

LOCAL = "local"
NODE_BUCKET = "node-bucket"
RESTIC = "restic"
PANEL_BUCKET = "panel-bucket"
KINDS = (LOCAL, NODE_BUCKET, RESTIC, PANEL_BUCKET)
# The stores that keep backups the node can find, download, restore and delete (the panel's
# bucket is the panel's: the node only uploads into it).
HOLDING = (LOCAL, NODE_BUCKET, RESTIC)

# The step a child's backup stops at (WINGSBAK_FAILPOINT=store-suite-creating:pause).
CREATING = "store-suite-creating"

# What each store raises when its folder, bucket or repository is not there.
STORE_ERRORS: dict[str, type[BaseException]] = {
    LOCAL: OSError,
    NODE_BUCKET: S3Error,
    RESTIC: ResticError,
    PANEL_BUCKET: PresignedUploadError,
}


@dataclass(frozen=True)
class Where:
    kind: str
    home: str  # this store's own folder: the node's backup folder, state files, caches
    endpoint: str = ""  # node bucket: moto
    bucket: str = ""
    repository: str = ""  # restic
    password_file: str = ""
    panel: str = ""  # panel bucket: the panel stand-in's URL ("" = no panel configured)

    @property
    def backups(self) -> Path:
        return Path(self.home) / "backups"

    def restic_block(self) -> dict[str, Any]:
        return {"repository": self.repository, "password_file": self.password_file}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Where:
        return cls(**json.loads(text))


def build(where: Where) -> BackupStore:
    """The store ``where`` describes, not started."""
    home = Path(where.home)
    if where.kind == LOCAL:
        return LocalStore(BackupDirectory(where.backups))
    if where.kind == NODE_BUCKET:
        # Few, quick retries: a missing bucket is not retried anyway, and no case here has
        # S3 fail for a while.
        storage = NodeBucket(
            s3_config(where.endpoint, where.bucket), attempts=2, backoff=0.05, state_dir=home
        )
        return NodeBucketStore(storage)
    if where.kind == RESTIC:
        cfg = ResticConfig(repository=where.repository, password_file=where.password_file)
        return ResticStore(cfg, home / "restic-cache", home / ".wingsbak-restic-forget.json")
    if where.kind == PANEL_BUCKET:
        panel = PanelClient(where.panel, TOKEN_ID, NODE_TOKEN)
        return PresignedStore(panel, BackupDirectory(where.backups), backoff=0.05)
    raise ValueError(f"no such store kind: {where.kind!r}")


def start(store: BackupStore) -> None:
    """Blocking: what the daemon does with a store before its first backup."""
    begin = getattr(store, "start", None)
    if begin is not None:
        begin()


async def stop(store: BackupStore) -> None:
    end = getattr(store, "stop", None)
    if end is not None:
        end()
    if isinstance(store, PresignedStore):
        await store.panel.close()


@contextlib.contextmanager
def job_threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="suite-job") as pool:
        yield pool


def source(
    server: str, backup: str, root: Path, executor: ThreadPoolExecutor, **options: Any
) -> BackupSource:
    return BackupSource(server, backup, root, "", ArchiveOptions(**options), executor)


def leftovers(where: Where, server: str, backup: str) -> list[str]:
    """Everything this store holds of this backup, whole or partial: files under the node's
    backup folder, objects and unfinished uploads in the bucket, snapshots in the repository."""
    if where.kind in (LOCAL, PANEL_BUCKET):
        found = [str(p) for p in where.backups.rglob("*") if backup in p.name]
        return sorted(found)
    if where.kind == NODE_BUCKET:
        s3 = admin_client(where.endpoint)
        objects = s3.list_objects_v2(Bucket=where.bucket).get("Contents", [])
        uploads = s3.list_multipart_uploads(Bucket=where.bucket).get("Uploads", [])
        return sorted(
            [f"object {o['Key']}" for o in objects if backup in o["Key"]]
            + [f"upload {u['Key']}" for u in uploads if backup in u["Key"]]
        )
    if where.kind == RESTIC:
        return [f"snapshot {s['id']}" for s in snapshots(where.restic_block(), f"backup:{backup}")]
    raise ValueError(where.kind)


# -- the child process: one backup, stopped at CREATING -------------------------------------


def child_command(where: Where, server: str, backup: str, root: Path, after: int) -> list[str]:
    """A process that creates this backup and reaches the ``CREATING`` failpoint once ``after``
    bytes are read (WINGSBAK_FAILPOINT decides what happens there)."""
    args = [where.to_json(), server, backup, str(root), str(after)]
    return [sys.executable, "-m", "tests.support.stores", "create", *args]


def _child_create(where: Where, server: str, backup: str, root: Path, after: int) -> Outcome:
    store = build(where)
    start(store)

    def progress(p: ArchiveProgress) -> None:
        if p.bytes_read >= after:
            failpoint.hit(CREATING)

    async def create() -> Outcome:
        try:
            with job_threads() as pool:
                # 2 MiB/s: the backup is still running for seconds when the failpoint fires.
                made = source(server, backup, root, pool, progress=progress, write_limit=2)
                return await store.create(made)
        finally:
            await stop(store)

    return asyncio.run(create())


def main(argv: list[str]) -> int:
    if argv[:1] != ["create"] or len(argv) != 6:
        print("usage: python -m tests.support.stores create WHERE SERVER BACKUP ROOT AFTER")
        return 2
    where = Where.from_json(argv[1])
    outcome = _child_create(where, argv[2], argv[3], Path(argv[4]), int(argv[5]))
    # Reaching this line means the failpoint never fired: the test says so.
    print(json.dumps(dataclasses.asdict(outcome)))
    return 3


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
