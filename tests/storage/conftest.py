"""Fixtures of the S3 tests (defined in s3_fixtures.py, shared with tests/faults), and the
daemon and recording panel of the daemon suite (daemon_fixtures.py, whose folder is put on
``sys.path`` here)."""

from __future__ import annotations

import sys
from pathlib import Path

_DAEMON_TESTS = Path(__file__).resolve().parent.parent / "daemon"
if str(_DAEMON_TESTS) not in sys.path:
    sys.path.insert(0, str(_DAEMON_TESTS))

from daemon_fixtures import node, panel, start_daemon  # noqa: E402, F401 - registers them
from s3_fixtures import (  # noqa: E402, F401 - imported to register the fixtures
    _proxy_server,
    big_tree,
    bucket,
    fault_proxy,
    moto_endpoint,
    s3_admin,
)
