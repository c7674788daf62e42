"""Fixtures of the fault and hostile-input tests (issue 7). They reuse the helpers of the daemon
and storage suites (a recording panel, the node layout, moto in server mode, the fault proxy),
which live beside those suites: their folders are on pytest's ``pythonpath`` (pyproject.toml)."""

from __future__ import annotations

from daemon_fixtures import (  # noqa: F401 - imported to register the fixtures
    daemon_process,
    node,
    panel,
    start_daemon,
)
from s3_fixtures import (  # noqa: F401 - imported to register the fixtures
    _proxy_server,
    bucket,
    fault_proxy,
    moto_endpoint,
    s3_admin,
)
