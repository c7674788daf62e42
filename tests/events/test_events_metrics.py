"""GET /metrics over real HTTP, parsed with prometheus-client's own parser: who may read it, and
the counters and gauges after real backups, a failed backup, a download and a panel outage."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon_helpers import download_claims, new_uuid, sign, wait_until

MIB = 1024 * 1024


async def scrape(daemon: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """{(sample name, frozenset(labels)): value} of one scrape that must succeed."""
    if headers is None:
        headers = {"Authorization": f"Bearer {daemon.cfg.token}"}
    async with daemon.session.get(f"{daemon.url}/metrics", headers=headers) as r:
        text = await r.text()
        assert r.status == 200, text
        assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_until(
    daemon: Any, holds: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0
) -> dict[str, Any]:
    """Scrape ``/metrics`` until ``holds(samples)``; the samples that held."""
    last: dict[str, Any] = {}

    async def check() -> bool:
        last.clear()
        last.update(await scrape(daemon))
        return holds(last)

    await wait_until(check, what, timeout=timeout)
    return last


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    """A sample's value; a labelled counter that never moved has no sample and counts as 0."""
    return float(samples.get((name, frozenset(labels.items())), 0.0))


async def test_metrics_need_the_node_token_unless_public(start_daemon, node):
    daemon = await start_daemon()
    url = f"{daemon.url}/metrics"
    async with daemon.session.get(url) as r:
        assert r.status == 401
    async with daemon.session.get(url, headers={"Authorization": "Bearer wrong-token"}) as r:
        assert r.status == 403
    samples = await scrape(daemon)
    names = {name for name, _labels in samples}
    for expected in (
        "wingsbak_archived_bytes_total",
        "wingsbak_backup_queue_depth",
        "wingsbak_report_outbox_size",
        "wingsbak_downloads_total",
        "wingsbak_archive_duration_seconds_count",
    ):
        assert expected in names, sorted(names)
    assert value(samples, "wingsbak_backup_queue_depth") == 0

    public = await start_daemon(config_hook=lambda raw: raw["api"].update(metrics_public=True))
    await scrape(public, headers={})
    # The switch opens /metrics only, not the API.
    async with public.session.get(f"{public.url}/api/system") as r:
        assert r.status == 401


async def test_counters_after_a_good_and_a_failed_backup_a_download_and_a_panel_outage(
    start_daemon, panel, node
):
    panel.status = 500  # every report waits in the outbox; the s3 flow cannot get part URLs
    daemon = await start_daemon(remote=panel.url, write_limit=2, compression_level="none")
    server = node.random_server(2 * MIB)
    good, bad = new_uuid(), new_uuid()
    assert (await daemon.post_backup(server, good, adapter="wings"))[0] == 202
    # The s3 backup waits behind the first: one per server.
    assert (await daemon.post_backup(server, bad, adapter="s3"))[0] == 202

    await scrape_until(
        daemon,
        lambda m: (
            (value(m, "wingsbak_backups_running"), value(m, "wingsbak_backup_queue_depth"))
            == (1, 1)
        ),
        "one backup running and one queued",
        timeout=10,
    )
    samples = await scrape_until(
        daemon, lambda m: value(m, "wingsbak_report_outbox_size") == 2, "two reports waiting"
    )

    archive = node.archive(server, good).read_bytes()
    assert value(samples, "wingsbak_backups_started_total", adapter="wings") == 1
    assert value(samples, "wingsbak_backups_started_total", adapter="s3") == 1
    assert value(samples, "wingsbak_backups_succeeded_total", adapter="wings") == 1
    assert value(samples, "wingsbak_backups_succeeded_total", adapter="s3") == 0
    assert value(samples, "wingsbak_backups_failed_total", adapter="s3") == 1
    assert value(samples, "wingsbak_backups_failed_total", adapter="wings") == 0
    assert value(samples, "wingsbak_archived_bytes_total") == len(archive)
    assert value(samples, "wingsbak_archive_duration_seconds_count") >= 1
    assert value(samples, "wingsbak_archive_duration_seconds_sum") > 0
    assert value(samples, "wingsbak_backup_queue_depth") == 0
    assert value(samples, "wingsbak_backups_running") == 0
    assert value(samples, "wingsbak_downloads_total") == 0
    # The s3 backup failed because the panel gave it no part URLs.
    assert any(r.method == "GET" and r.path == f"/api/remote/backups/{bad}" for r in panel.requests)

    token = sign(download_claims(server, good), daemon.cfg.token)
    async with daemon.session.get(f"{daemon.url}/download/backup", params={"token": token}) as r:
        assert r.status == 200
        assert hashlib.sha1(await r.read()).digest() == hashlib.sha1(archive).digest()
    samples = await scrape(daemon)
    assert value(samples, "wingsbak_downloads_total") == 1

    panel.status = 204  # the panel is back: the outbox empties
    await scrape_until(daemon, lambda m: value(m, "wingsbak_report_outbox_size") == 0, "outbox")
    good_report, bad_report = panel.reports(good)[-1].json, panel.reports(bad)[-1].json
    assert good_report["successful"] is True
    assert good_report["checksum"] == hashlib.sha1(archive).hexdigest()
    assert good_report["size"] == len(archive)
    assert bad_report["successful"] is False
