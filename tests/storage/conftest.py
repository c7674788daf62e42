"""Fixtures of the S3 tests (defined in s3_fixtures.py, shared with tests/faults), and the
daemon and recording panel of the daemon suite (daemon_fixtures.py, whose folder is on
pytest's ``pythonpath``)."""

from __future__ import annotations

from daemon_fixtures import daemon_process, node, panel, start_daemon  # noqa: F401 - registers them
from s3_fixtures import (  # noqa: F401 - imported to register the fixtures
    _proxy_server,
    big_tree,
    bucket,
    fault_proxy,
    moto_endpoint,
    s3_admin,
)
