"""Fixtures of the layout, deletion and transfer tests: the daemon as a real process in front of
the Wings stand-in (tests/daemon/wings_standin.py, with tests/daemon/wings_lifecycle.py), the
panel stand-in, moto for the node's bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from daemon_fixtures import client, daemon_process, node, panel  # noqa: F401
from daemon_helpers import Node
from s3_fixtures import bucket, moto_endpoint, s3_admin  # noqa: F401
from wings_standin import WingsStandin


@pytest.fixture
async def wings(node: Node) -> AsyncIterator[WingsStandin]:  # noqa: F811
    w = WingsStandin(node.data)
    w.lifecycle.backup_dir = node.backups
    await w.start()
    yield w
    await w.stop()
