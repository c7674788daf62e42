"""Fixtures of the fault and hostile-input tests (issue 7). They reuse the helpers of the daemon
and storage suites (a recording panel, the node layout, moto in server mode, the fault proxy),
which live beside those suites: their folders are put on ``sys.path`` here."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

_TESTS = Path(__file__).resolve().parent.parent
for _sub in ("daemon", "storage"):
    if str(_TESTS / _sub) not in sys.path:
        sys.path.insert(0, str(_TESTS / _sub))

from daemon_helpers import Daemon, DaemonProcess, Node, Panel, free_port  # noqa: E402
from s3_helpers import FaultPlan, FaultProxy, admin_client, start_moto  # noqa: E402

from wingsbak.config import parse_config, prepare_directories  # noqa: E402
from wingsbak.http.app import create_app  # noqa: E402


@pytest.fixture
async def panel() -> AsyncIterator[Panel]:
    p = Panel()
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path, tmp_path / "data", tmp_path / "backups")
    n.data.mkdir()
    n.backups.mkdir()
    return n


@pytest.fixture
async def start_daemon(node: Node) -> AsyncIterator[Callable[..., Any]]:
    """``await start_daemon(remote=..., config_hook=..., **system.backups)`` -> an in-process
    daemon; ``config_hook(dict)`` may edit the configuration before it is parsed."""
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
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
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
async def daemon_process(node: Node) -> AsyncIterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def make(remote: str = "", **backups: Any) -> DaemonProcess:
        config = node.config_dict(remote=remote, port=free_port(), **backups)
        p = DaemonProcess(node, config, node.root / "daemon.log")
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill_if_running()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, endpoint = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield endpoint
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def s3_admin(moto_endpoint: str) -> Any:
    return admin_client(moto_endpoint)


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"faults-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def _proxy_server(moto_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def fault_proxy(_proxy_server: FaultProxy) -> FaultProxy:
    _proxy_server.plan = FaultPlan()
    return _proxy_server
