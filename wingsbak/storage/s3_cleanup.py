"""What the node still owes its own bucket after an S3 outage or a crash: multipart uploads to
abort (their parts are billed until then) and objects of backups reported failed to delete.

Each is kept in a small state file, rewritten atomically, until S3 has done it: it is tried
again on a thread of its own, at growing intervals while S3 does not answer, at once when S3
is seen answering again (an upload completes), and at every start. At start the node's own
unfinished uploads that no job owns are aborted too: keys of the layout
``<prefix><server>/<archive name>`` of a server on this node, begun before this start and
not being written by this process. Other keys, and other nodes' servers in a shared bucket,
are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from wingsbak.archive.codecs import GZIP
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic
from wingsbak.uuids import UUID_PATTERN

log = get_logger(__name__)

STATE_NAME = ".wingsbak-s3-cleanup.json"
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
_UUID = UUID_PATTERN
# Answers that mean the work is done already (an abort of an upload that is gone).
_DONE = frozenset({"NoSuchUpload", "NoSuchKey"})

Operation = dict[str, str]  # {"op": "abort", "key", "upload_id"} or {"op": "delete", "key"}


def _code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


class S3Cleanup:
    """The node bucket's pending aborts and deletes, and the start-up sweep of its uploads."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        state_file: Path | None = None,
        servers_dir: Path | None = None,
        *,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.state_file = state_file
        self.servers_dir = servers_dir
        self.retry_first = retry_first
        self.retry_max = retry_max
        self._layout = re.compile(
            rf"^{re.escape(prefix)}(?P<server>{_UUID})/(?P<backup>{_UUID})"
            + re.escape(GZIP.suffix)
            + "$"
        )
        self._prefix = prefix
        self._cond = threading.Condition()
        self._pending: list[Operation] = []
        self._owned: set[str] = set()  # keys this process is uploading
        self._sweep_due = False
        self._since = datetime.now(UTC)  # uploads begun after this are a running job's
        self._thread: threading.Thread | None = None
        self._woken = False
        self._stopping = False

    # -- the durable list --------------------------------------------------------------------

    @property
    def pending(self) -> list[Operation]:
        with self._cond:
            return [dict(op) for op in self._pending]

    def _load(self) -> None:
        if self.state_file is None:
            return
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("s3_cleanup_state_unreadable", path=str(self.state_file), error=str(exc))
            return
        ops = [op for op in data if _valid(op)] if isinstance(data, list) else []
        with self._cond:
            for op in ops:
                if op not in self._pending:
                    self._pending.append(op)

    def _save(self) -> None:
        """Under the lock. A state file that cannot be written (a full disk) costs only the
        retry after a restart; the work is still tried while the daemon runs."""
        if self.state_file is None:
            return
        try:
            if self._pending:
                write_json_atomic(self.state_file, self._pending)
            else:
                self.state_file.unlink(missing_ok=True)
        except OSError as exc:
            log.error("s3_cleanup_state_not_saved", path=str(self.state_file), error=str(exc))

    def add_abort(self, key: str, upload_id: str) -> None:
        """An upload whose abort S3 did not take: aborted as soon as S3 answers."""
        self._add({"op": "abort", "key": key, "upload_id": upload_id})

    def add_delete(self, key: str) -> None:
        """An object of a backup reported failed: deleted as soon as S3 answers."""
        self._add({"op": "delete", "key": key})

    def _add(self, op: Operation) -> None:
        with self._cond:
            if op not in self._pending:
                self._pending.append(op)
                self._save()
            log.warning("s3_cleanup_pending", pending=len(self._pending), **op)
            self._ensure_thread(wait_first=True)

    @contextlib.contextmanager
    def owning(self, key: str) -> Iterator[None]:
        """While a job uploads ``key``: the sweep leaves its upload alone."""
        with self._cond:
            self._owned.add(key)
        try:
            yield
        finally:
            with self._cond:
                self._owned.discard(key)

    # -- the retrying thread -----------------------------------------------------------------

    def start(self) -> None:
        """At start (blocking only to read the state file): what an earlier run left pending,
        and the sweep of the node's own uploads that no job owns, on the cleanup thread."""
        self._load()
        with self._cond:
            self._sweep_due = self.servers_dir is not None
            if self._pending or self._sweep_due:
                self._ensure_thread(wait_first=False)

    def kick(self) -> None:
        """S3 answered: pending work is tried now rather than at its next interval."""
        with self._cond:
            if self._thread is not None:
                self._woken = True
                self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _ensure_thread(self, wait_first: bool) -> None:
        if self._thread is None and not self._stopping:
            self._thread = threading.Thread(
                target=self._run, args=(wait_first,), name="wingsbak-s3-cleanup", daemon=True
            )
            self._thread.start()

    def _run(self, wait_first: bool) -> None:
        delay = self.retry_first
        while True:
            with self._cond:
                if wait_first:
                    if not self._woken:
                        self._cond.wait(delay)
                    delay = self.retry_first if self._woken else min(delay * 2, self.retry_max)
                    self._woken = False
                wait_first = True
                if self._stopping or not (self._pending or self._sweep_due):
                    self._thread = None
                    return
            self.run_once()

    def run_once(self) -> None:
        """One try of everything pending (blocking); what S3 did not take stays pending."""
        with self._cond:
            sweep = self._sweep_due
            ops = list(self._pending)
        errors: list[str] = []
        if sweep:
            try:
                self._sweep()
            except Exception as exc:
                if not _refused(exc):
                    errors.append(str(exc))
                else:  # e.g. a key without s3:ListBucketMultipartUploads: not tried again
                    log.warning("s3_orphan_sweep_refused", bucket=self.bucket, error=str(exc))
                    with self._cond:
                        self._sweep_due = False
            else:
                with self._cond:
                    self._sweep_due = False
        for op in ops:
            try:
                self._do(op)
            except Exception as exc:
                if _code(exc) not in _DONE:
                    errors.append(f"{op['op']} {op['key']}: {_code(exc) or exc}")
                    continue
            log.info("s3_cleanup_done", **op)
            with self._cond:
                if op in self._pending:
                    self._pending.remove(op)
                    self._save()
        if errors:
            log.warning("s3_cleanup_retry_later", pending=len(self.pending), error=errors[0])

    def _do(self, op: Operation) -> None:
        if op["op"] == "abort":
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=op["key"], UploadId=op["upload_id"]
            )
        else:
            self.client.delete_object(Bucket=self.bucket, Key=op["key"])

    def _sweep(self) -> None:
        """Abort the unfinished uploads of this node's servers that no job owns."""
        servers = self._servers()
        if not servers:
            return
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix):
            for upload in page.get("Uploads", []):
                key = str(upload.get("Key", ""))
                match = self._layout.match(key)
                if match is None or match["server"] not in servers:
                    continue
                initiated = upload.get("Initiated")
                with self._cond:
                    if key in self._owned:
                        continue
                if isinstance(initiated, datetime) and initiated >= self._since:
                    continue
                upload_id = str(upload["UploadId"])
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
                except Exception as exc:
                    if _code(exc) in _DONE:
                        continue
                    self.add_abort(key, upload_id)
                    continue
                log.info("s3_orphaned_upload_aborted", key=key)

    def _servers(self) -> set[str]:
        """The servers on this node: the folders of its data directory."""
        assert self.servers_dir is not None
        try:
            with os.scandir(self.servers_dir) as it:
                return {e.name for e in it if e.is_dir(follow_symlinks=False)}
        except OSError:
            return set()


def _refused(exc: BaseException) -> bool:
    """S3 answered and said no (4xx other than 429): asking again will not change it."""
    if not isinstance(exc, ClientError):
        return False
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 400 <= status < 500 and status != 429


def _valid(op: Any) -> bool:
    if not isinstance(op, dict) or not all(isinstance(v, str) for v in op.values()):
        return False
    if op.get("op") == "abort":
        return set(op) == {"op", "key", "upload_id"}
    return op.get("op") == "delete" and set(op) == {"op", "key"}
