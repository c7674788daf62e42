"""Prometheus metrics of one daemon (its own registry, so several apps can live in a test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.backups_started = Counter(
            "wingsbak_backups_started", "Backups started", ["adapter"], registry=r
        )
        self.backups_succeeded = Counter(
            "wingsbak_backups_succeeded", "Backups that completed", ["adapter"], registry=r
        )
        self.backups_failed = Counter(
            "wingsbak_backups_failed",
            "Backups that failed or were cancelled",
            ["adapter"],
            registry=r,
        )
        self.skipped_entries = Counter(
            "wingsbak_backup_skipped_entries",
            "Entries left out of successful backups because they could not be read "
            "(system.backups.allow_skipped)",
            registry=r,
        )
        self.archived_bytes = Counter(
            "wingsbak_archived_bytes", "Compressed archive bytes written", registry=r
        )
        self.archive_duration = Histogram(
            "wingsbak_archive_duration_seconds",
            "Wall time of a backup",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=r,
        )
        self.s3_uploaded_bytes = Counter(
            "wingsbak_s3_uploaded_bytes", "Bytes uploaded to S3 in parts", registry=r
        )
        self.s3_part_retries = Counter(
            "wingsbak_s3_part_retries", "S3 part uploads retried", registry=r
        )
        self.restores = Counter(
            "wingsbak_restores", "Restores finished", ["successful"], registry=r
        )
        self.queue_depth = Gauge("wingsbak_backup_queue_depth", "Backups waiting", registry=r)
        self.running = Gauge("wingsbak_backups_running", "Backups running", registry=r)
        self.outbox_size = Gauge(
            "wingsbak_report_outbox_size", "Panel reports not yet delivered", registry=r
        )
        self.downloads = Counter("wingsbak_downloads", "Backup downloads served", registry=r)
        # Per server, kept across restarts (wingsbak.watch): an alert on "no success for a
        # day" must neither fire nor go quiet because the daemon restarted.
        self.last_success = Gauge(
            "wingsbak_backup_last_success_timestamp_seconds",
            "When the server's last successful backup ended (Unix time)",
            ["server"],
            registry=r,
        )
        self.last_failure = Gauge(
            "wingsbak_backup_last_failure_timestamp_seconds",
            "When the server's last failed backup ended (Unix time)",
            ["server"],
            registry=r,
        )
        self.corrupt_found = Counter(
            "wingsbak_backup_corrupt",
            "Stored backups found corrupt by their check (each finding counted once)",
            ["store"],
            registry=r,
        )
        self.corrupt_now = Gauge(
            "wingsbak_backups_corrupt",
            "Stored backups whose last check found them corrupt",
            registry=r,
        )
        self.verified = Counter(
            "wingsbak_backup_verified",
            "Stored backups (restic: repository slices) checked and found sound",
            ["store"],
            registry=r,
        )
        self.backup_dir_free = Gauge(
            "wingsbak_backup_directory_free_bytes",
            "Bytes available to wingsbak on the file system of system.backup_directory",
            registry=r,
        )
        self.backup_dir_size = Gauge(
            "wingsbak_backup_directory_size_bytes",
            "Size of the file system of system.backup_directory",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
