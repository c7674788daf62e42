"""Fixtures shared by the daemon, event, storage and fault suites: the real daemon on a free
port (in-process or as a subprocess) and a small real panel that records every request and can
be told to fail. A conftest imports them to make them available to its folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.daemon_helpers import Daemon, DaemonProcess, Node, Panel, free_port
from wingsbak.config import prepare_directories
from wingsbak.daemon import build_app as create_app
from wingsbak.http.server import start_server
from wingsbak.storage.select import parse_config


@pytest.fixture
async def panel() -> AsyncIterator[Panel]:
    """The panel stand-in (Pterodactyl's rules unless ``WINGSBAK_TEST_PANEL=pelican``; a test
    may switch ``flavour``). A test that leaves a refusal it did not take
    (``take_rejections``) fails: the daemon broke a rule."""
    p = Panel()
    await p.start()
    yield p
    await p.stop()
    assert_no_rejections(p)


@pytest.fixture
async def panel_down() -> AsyncIterator[Panel]:
    """A panel whose port is reserved but not listening until the test calls ``start()``."""
    p = Panel()
    yield p
    await p.stop()
    assert_no_rejections(p)


def assert_no_rejections(panel: Panel) -> None:
    left = panel.take_rejections()
    assert not left, "the panel refused: " + "; ".join(
        f"{r.request.method} {r.request.path} -> {r.status} {r.reason} ({r.request.json})"
        for r in left
    )


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path, tmp_path / "data", tmp_path / "backups")
    n.data.mkdir()
    n.backups.mkdir()
    return n


@pytest.fixture
async def start_daemon(node: Node, panel: Panel) -> AsyncIterator[Callable[..., Any]]:
    """``await start_daemon(remote=..., config_hook=..., **system.backups)`` -> an in-process
    daemon; ``config_hook(dict)`` may edit the configuration before it is parsed.

    Depends on ``panel`` so that the panel outlives the daemons (their last reports land)."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(
        remote: str = "", config_hook: Callable[[dict[str, Any]], None] | None = None, **kw: Any
    ) -> Daemon:
        raw = node.config_dict(remote=remote, **kw)
        if config_hook is not None:
            config_hook(raw)
        cfg = parse_config(raw)
        prepare_directories(cfg)
        app = create_app(cfg)
        # The daemon's own server stack (its connection guards), on a free port.
        runner = await start_server(app, cfg.api, host="127.0.0.1", port=0, shutdown_timeout=2.0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Daemon(f"http://{host}:{port}", cfg, app, session)

    yield start
    for s in sessions:
        await s.close()
    for r in reversed(runners):
        await r.cleanup()


@pytest.fixture
async def daemon(start_daemon: Callable[..., Any], panel: Panel) -> Daemon:
    d: Daemon = await start_daemon(remote=panel.url)
    return d


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def daemon_process(node: Node) -> AsyncIterator[Callable[..., DaemonProcess]]:
    """``daemon_process(remote=..., **system.backups)`` -> a not yet started daemon process."""
    made: list[DaemonProcess] = []

    def make(remote: str = "", **backups: Any) -> DaemonProcess:
        config = node.config_dict(remote=remote, port=free_port(), **backups)
        p = DaemonProcess(node, config, node.root / "daemon.log")
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill_if_running()
