"""At start the daemon says, in one log line, whether the configured bucket can be used."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from structlog.testing import capture_logs

from tests.support.s3_helpers import s3_config
from wingsbak.appkeys import STORES


async def started_check(
    start_daemon: Callable[..., Any], endpoint: str, bucket: str
) -> list[dict[str, Any]]:
    """The log entries of the start-up check of a daemon using ``bucket`` of ``endpoint``."""

    def s3(raw: dict[str, Any]) -> None:
        raw["system"]["backups"]["s3"] = dataclasses.asdict(s3_config(endpoint, bucket))

    with capture_logs() as logs:
        daemon = await start_daemon(config_hook=s3)
        # The daemon answers before the check is done: it runs on a thread of its own.
        async with daemon.request("GET", "/healthz") as resp:
            assert resp.status == 200
        thread = daemon.app[STORES].checks.get("s3")
        assert thread is not None
        for _ in range(600):
            if not thread.is_alive():
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the S3 check did not end")
    return [e for e in logs if e["event"].startswith("s3_bucket_")]


async def test_a_usable_bucket_is_confirmed(
    start_daemon: Callable[..., Any], moto_endpoint: str, bucket: str
) -> None:
    entries = await started_check(start_daemon, moto_endpoint, bucket)
    assert [(e["event"], e["bucket"]) for e in entries] == [("s3_bucket_ok", bucket)]


async def test_a_missing_bucket_is_one_clear_error_line(
    start_daemon: Callable[..., Any], moto_endpoint: str
) -> None:
    entries = await started_check(start_daemon, moto_endpoint, "no-such-bucket")
    assert [e["event"] for e in entries] == ["s3_bucket_unusable"]
    assert entries[0]["log_level"] == "error"
    assert "no-such-bucket" in entries[0]["error"]
