"""Fixtures of the layout, deletion and transfer tests: the daemon as a real process in front of
the Wings stand-in (tests/support/wings_standin.py, with tests/support/wings_lifecycle.py), the
panel stand-in, moto for the node's bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.daemon_helpers import Node
from tests.support.wings_standin import WingsStandin


@pytest.fixture
async def wings(node: Node) -> AsyncIterator[WingsStandin]:
    w = WingsStandin(node.data)
    w.lifecycle.backup_dir = node.backups
    await w.start()
    yield w
    await w.stop()
