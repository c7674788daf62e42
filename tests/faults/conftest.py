"""Fixtures of the fault and hostile-input tests (issue 7). They reuse the helpers of the daemon
and storage suites (a recording panel, the node layout, moto in server mode, the fault proxy),
which live beside those suites: their folders are put on ``sys.path`` here."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
for _sub in ("daemon", "storage"):
    if str(_TESTS / _sub) not in sys.path:
        sys.path.insert(0, str(_TESTS / _sub))

from daemon_fixtures import (  # noqa: E402, F401 - imported to register the fixtures
    daemon_process,
    node,
    panel,
    start_daemon,
)
from s3_fixtures import (  # noqa: E402, F401 - imported to register the fixtures
    _proxy_server,
    bucket,
    fault_proxy,
    moto_endpoint,
    s3_admin,
)
