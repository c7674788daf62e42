"""GET /api/system, GET /healthz, and an event loop that keeps answering during a backup."""

from __future__ import annotations

import asyncio

import wingsbak
from tests.support.daemon_helpers import NODE_TOKEN, Daemon, Node, Panel, auth, new_uuid


async def test_system_shows_version_and_jobs(daemon: Daemon):
    info = await daemon.system()
    assert info["version"] == wingsbak.__version__
    jobs = info["jobs"]
    assert jobs["running"] == [] and jobs["queued"] == []
    assert jobs["max_concurrent"] == daemon.cfg.system.backups.max_concurrent
    assert jobs["accepting"] is True
    assert NODE_TOKEN not in repr(info)


async def test_system_needs_auth_healthz_does_not(daemon: Daemon):
    async with daemon.request("GET", "/api/system") as r:
        assert r.status == 401
    async with daemon.request("GET", "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"


async def test_event_loop_answers_during_a_large_backup(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url)
    server = node.random_server(50 * 1024 * 1024, files=10)
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202

    async def one() -> dict:
        async with d.request("GET", "/api/wingsbak", headers=auth()) as r:
            assert r.status == 200
            return await r.json()

    first = await one()
    busy = first["jobs"]["running"] + first["jobs"]["queued"]
    assert [j["uuid"] for j in busy] == [backup], first
    results = await asyncio.gather(*(one() for _ in range(49)))
    assert len(results) == 49 and all("jobs" in r for r in results)
    report = await panel.wait_report(backup, timeout=60)
    assert report.json["successful"] is True
