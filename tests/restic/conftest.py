"""The restic store's tests: the real restic binary, repositories in temp dirs (one in moto's
S3 server), the real daemon and the recording panel of the daemon suite."""

from __future__ import annotations

from daemon_fixtures import daemon_process, node, panel, start_daemon  # noqa: F401
from s3_fixtures import bucket, moto_endpoint, s3_admin  # noqa: F401
