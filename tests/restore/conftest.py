"""Fixtures of the restore tests: ``serve``, a small real server for download URLs, and the
daemon, node and recording panel of tests/support/daemon_fixtures.py (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from restore_helpers import Handler, Serve


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/{path:.*}", handler)  # any path: S3 keys too
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/backup.tar.gz"

    yield start
    for runner in runners:
        await runner.cleanup()
