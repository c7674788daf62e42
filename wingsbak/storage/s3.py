"""The ``s3`` store: backups in the node's own bucket (:mod:`wingsbak.storage.bucket`)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wingsbak.archive.archiver import ArchiveResult
from wingsbak.archive.index import INDEX_SUFFIX
from wingsbak.archive.rules import IgnoreRules
from wingsbak.browse.model import BackupFolder, BackupView, Browsable
from wingsbak.browse.tarview import S3ObjectSource, open_tar_view
from wingsbak.config import ConfigError
from wingsbak.download_source import shutdown_socket_under
from wingsbak.log import get_logger
from wingsbak.storage.base import (
    ArchiveStream,
    BackupSource,
    BackupStore,
    Download,
    Outcome,
    Redirect,
    StoreContext,
)
from wingsbak.storage.bucket import NodeBucket, S3Config, S3Error, describe, endpoint_url

log = get_logger(__name__)

INDEX_DIR = ".wingsbak-bucket-index"


class NodeBucketStore(BackupStore):
    """The node's own bucket (``system.backups.store: s3``). Its report is a local-style one
    (no ``parts``): the node completed the upload itself, the panel has nothing to finish."""

    name = "s3"
    outlives_server = True
    settings_key = S3Config.key

    @classmethod
    def parse_settings(cls, raw: Any, chosen: bool) -> S3Config:
        cfg = S3Config.parse(raw)
        if chosen and not cfg.bucket:
            raise ConfigError("system.backups.s3.bucket: must be set for system.backups.store: s3")
        return cfg

    def __init__(
        self, storage: NodeBucket, on_uploaded: Callable[[int], None] | None = None
    ) -> None:
        self.storage = storage
        self.on_uploaded = on_uploaded
        # Indexes of the bucket's archives, built by their first browse.
        state = storage.state_dir or Path(tempfile.gettempdir())
        self.index_dir = state / INDEX_DIR

    @classmethod
    def from_config(cls, ctx: StoreContext) -> NodeBucketStore | None:
        config = ctx.config
        cfg = S3Config.of(config)
        if not cfg.bucket:
            return None
        storage = NodeBucket(cfg, state_dir=config.backup_dir, servers_dir=config.data_dir)
        return cls(storage, on_uploaded=ctx.on_uploaded)

    def start(self) -> None:
        """Say at start whether the configured bucket can be used, so that the operator does
        not learn it from the first failed backup: S3 may be back later, and every backup
        finds out for itself."""
        s3 = self.storage
        try:
            s3.check()
        except Exception as exc:
            error = describe(exc, s3.bucket, "checking the bucket")
            log.error("s3_bucket_unusable", bucket=s3.bucket, error=str(error))
        else:
            log.info("s3_bucket_ok", bucket=s3.bucket)
        # Also when unusable now: pending aborts and deletes wait for S3 on their thread.
        s3.cleanup.start()

    def stop(self) -> None:
        self.storage.cleanup.stop()

    def trusted_hosts(self) -> list[str]:
        """The host of the node's own endpoint: an operator who configured a private MinIO
        has already said the node may talk to it."""
        endpoint = endpoint_url(self.storage.cfg)
        host = urlsplit(endpoint).hostname if endpoint else None
        return [host] if host else []

    def remove_server(self, server: str) -> dict[str, int]:
        shutil.rmtree(self.index_dir / server, ignore_errors=True)
        return {"s3_objects": self.storage.delete_server(server)}

    async def create(self, source: BackupSource) -> Outcome:
        return await source.in_job_thread(self._create)

    def _create(self, source: BackupSource) -> Outcome:
        rules = IgnoreRules.for_server(source.root, source.ignore)
        key = self.storage.key(source.server, source.backup)

        def committing(result: ArchiveResult, upload_id: str) -> None:
            # In the journal before S3 completes the upload: a daemon killed after S3 did so
            # finds here the checksum it cannot read from the object (see recover).
            if source.note is None:
                return
            commit = {
                "key": key,
                "upload_id": upload_id,
                "size": result.size,
                "checksum": result.checksum,
                "checksum_type": result.checksum_type,
            }
            try:
                source.note(s3_commit=commit)
            except OSError as exc:  # costs only the report of a crash in the next instants
                log.error("journal_not_saved", backup=source.backup, error=str(exc))

        result = self.storage.upload_backup(
            str(source.root),
            source.server,
            source.backup,
            rules,
            committing=committing,
            **source.options.engine_arguments(),
        )
        if self.on_uploaded is not None:
            self.on_uploaded(result.size)
        return Outcome(
            True, result.checksum, result.checksum_type, result.size, skipped=result.unreadable
        )

    def exists(self, server: str, backup: str) -> bool:
        return self.storage.exists(server, backup)

    def open_download(self, server: str, backup: str) -> Download | None:
        size = self.storage.size(server, backup)
        if size is None:
            return None
        return Redirect(size, lambda: self.storage.presigned_download_url(server, backup))

    def open_restore(
        self, server: str, backup: str
    ) -> contextlib.AbstractContextManager[ArchiveStream] | None:
        size = self.storage.size(server, backup)
        return None if size is None else self._stream(server, backup, size)

    @contextlib.contextmanager
    def _stream(self, server: str, backup: str, size: int) -> Iterator[ArchiveStream]:
        body = self.storage.open_stream(server, backup)
        try:
            yield ArchiveStream(body, size, lambda: shutdown_socket_under(body))
        finally:
            body.close()

    def delete(self, server: str, backup: str) -> bool:
        self._index_of(server, backup).unlink(missing_ok=True)
        return self.storage.delete(server, backup)

    def server_of(self, backup: str) -> str | None:
        return self.storage.server_of(backup)

    def browsable(self, server: str) -> Iterator[Browsable]:
        """The server's objects, read by ranged GETs of the gzip members a file spans; their
        indexes are built by a first browse and kept on the node (the node's state folder)."""
        storage = self.storage
        for backup, key, when, etag in storage.backups_of(server):
            folder = BackupFolder(backup, server, when, self.name)
            index = self._index_of(server, backup)

            def opener(key: str = key, index: Path = index) -> BackupView:
                index.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                return open_tar_view(S3ObjectSource(storage.client, storage.bucket, key), index)

            yield Browsable(folder, opener, etag)

    def _index_of(self, server: str, backup: str) -> Path:
        return self.index_dir / server / f"{backup}{INDEX_SUFFIX}"

    def recover(
        self, server: str, backup: str, entry: Mapping[str, Any] | None = None
    ) -> Outcome | None:
        """The object of a backup the daemon died in is complete when it is there with the
        size the journal noted before S3 was asked to complete it: the backup succeeded,
        with the noted checksum. An object nothing vouches for is deleted (the backup is
        reported failed), and unfinished uploads are aborted; what S3 does not take now is
        kept and done once it answers."""
        storage = self.storage
        key = storage.key(server, backup)
        commit = entry.get("s3_commit") if entry is not None else None
        commit = commit if isinstance(commit, dict) else {}
        try:
            size = storage.size(server, backup)
        except S3Error as exc:
            log.error("interrupted_upload_not_checked", backup=backup, error=str(exc))
            storage.cleanup.add_delete(key)
            if isinstance(commit.get("upload_id"), str):
                storage.cleanup.add_abort(key, commit["upload_id"])
            return None
        if size is not None:
            checksum = commit.get("checksum")
            if commit.get("key") == key and commit.get("size") == size and checksum:
                log.info("interrupted_upload_found_complete", backup=backup, size=size)
                kind = str(commit.get("checksum_type") or "sha1")
                return Outcome(True, str(checksum), kind, size)
            try:
                storage.delete(server, backup)
                log.warning("interrupted_upload_object_removed", backup=backup, key=key)
            except S3Error as exc:
                log.error("interrupted_upload_object_not_removed", backup=backup, error=str(exc))
                storage.cleanup.add_delete(key)
        try:
            aborted = storage.abort_incomplete(server, backup)
            log.info("interrupted_upload_aborted", backup=backup, uploads=aborted)
        except Exception as exc:  # the sweep of the node's uploads at start takes them
            log.error("interrupted_upload_not_aborted", backup=backup, error=str(exc))
        return None
