"""Fixtures of the front tests: a Wings stand-in (tests/support/wings_standin.py) on a free port,
and wingsbak in front of it (in-process, or as a process) with ``api.upstream`` pointing there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.support.daemon_helpers import Daemon, Node
from tests.support.wings_standin import WingsStandin


@pytest.fixture
async def wings(node: Node) -> AsyncIterator[WingsStandin]:
    w = WingsStandin(node.data)
    await w.start()
    yield w
    await w.stop()


@pytest.fixture
def start_front(
    start_daemon: Callable[..., Any],
    wings: WingsStandin,
    panel: Any,
) -> Any:
    """``await start_front(**system.backups)``: wingsbak in front of the stand-in."""

    async def start(api: dict[str, Any] | None = None, **backups: Any) -> Daemon:
        def hook(raw: dict[str, Any]) -> None:
            raw["api"].update({"upstream": wings.url, **(api or {})})

        d: Daemon = await start_daemon(remote=panel.url, config_hook=hook, **backups)
        return d

    return start


@pytest.fixture
async def front(start_front: Any) -> Daemon:
    d: Daemon = await start_front()
    return d
