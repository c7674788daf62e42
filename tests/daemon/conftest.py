"""Fixtures of the daemon tests (defined in daemon_fixtures.py, shared with tests/faults)."""

from daemon_fixtures import (  # noqa: F401 - imported to register the fixtures
    client,
    daemon,
    daemon_process,
    node,
    panel,
    panel_down,
    start_daemon,
)
