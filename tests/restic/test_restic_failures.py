"""restic that cannot be used: a clear failure report and a log line saying why, and a
chosen store without its settings refusing the start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.daemon_helpers import Node, Panel, free_port, new_uuid, wait_until
from tests.support.rest_standin import rest_repository
from tests.support.restic_helpers import (
    needs_restic,
    oracle,
    oracle_env,
    restic_backups,
    restic_block,
    snapshots,
)
from wingsbak.appkeys import STORES
from wingsbak.config import ConfigError
from wingsbak.storage.restic import ResticError, ResticStore
from wingsbak.storage.select import parse_config

pytestmark = needs_restic


async def failed_backup(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, **backups: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with capture_logs() as logs:
        d = await start_daemon(remote=panel.url, **backups)
        backup = new_uuid()
        assert (await d.post_backup(node.server(), backup))[0] == 202
        report = (await panel.wait_report(backup, timeout=60)).json
        thread = d.app[STORES].checks.get("restic")
        assert thread is not None
        await wait_until(lambda: not thread.is_alive(), "the restic check", timeout=60)
    assert report["successful"] is False
    assert report["checksum"] == "" and report["size"] == 0
    return report, logs


def line(logs: list[dict[str, Any]], event: str) -> str:
    (entry,) = [e for e in logs if e["event"] == event]
    return str(entry.get("error", ""))


async def test_a_wrong_password_fails_the_backup_with_restics_reason(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    block = restic_block(tmp_path)
    assert oracle(block, "init").returncode == 0
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    _, logs = await failed_backup(
        start_daemon, panel, node, store="restic", restic={**block, "password_file": str(wrong)}
    )
    assert "wrong password" in line(logs, "restic_unusable")
    assert "wrong password" in line(logs, "backup_failed")


async def test_a_missing_binary_fails_the_backup_naming_the_key(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    backups = restic_backups(tmp_path, binary=str(tmp_path / "no-such-restic"))
    _, logs = await failed_backup(start_daemon, panel, node, **backups)
    for event in ("restic_unusable", "backup_failed"):
        assert "was not found" in line(logs, event)
        assert "system.backups.restic.binary" in line(logs, event)


async def test_an_unreachable_repository_fails_the_backup(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    # A REST server address where nothing listens: connections are refused. restic 0.14
    # fails at once; 0.17 and later retry, and are stopped after retry_timeout.
    backups = restic_backups(tmp_path, f"rest:http://127.0.0.1:{free_port()}/repo", retry_timeout=3)
    _, logs = await failed_backup(start_daemon, panel, node, **backups)
    assert "connection refused" in line(logs, "restic_unusable").lower()
    assert "connection refused" in line(logs, "backup_failed").lower()


async def test_a_repository_that_keeps_failing_is_given_up_after_retry_timeout(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    # A REST repository whose storage goes away once the daemon has checked it: every
    # upload gets a 503. restic retries (0.14 ten times, about a minute; 0.17 and later for
    # 15 minutes) until wingsbak stops it; no snapshot is left.
    async with rest_repository(tmp_path, retry_timeout=2) as (rest, backups):
        rest.fail = lambda method, path: method == "POST" and path.startswith("/data/")
        _, logs = await failed_backup(start_daemon, panel, node, **backups)
        rest.fail = lambda method, path: False
        assert rest.refused  # restic did try to upload
        reason = line(logs, "backup_failed")
        assert "did not answer for 2 s" in reason
        assert "system.backups.restic.retry_timeout" in reason
        assert "503" in reason
        assert await asyncio.to_thread(snapshots, backups["restic"]) == []


async def test_a_repository_that_fails_once_is_retried_and_the_backup_succeeds(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    # One upload refused, then the storage is back but slow: the retry takes longer than
    # retry_timeout. restic 0.14 never says that a retry worked, so only the retry that is
    # overdue ends its chain; the backup must not be given up.
    async with rest_repository(tmp_path, retry_timeout=2) as (rest, backups):

        def upload(method: str, path: str) -> bool:
            return method == "POST" and path.startswith("/data/")

        rest.fail = lambda method, path: upload(method, path) and not rest.refused
        rest.delay = lambda method, path: 3.0 if upload(method, path) else 0.0
        d = await start_daemon(remote=panel.url, **backups)
        server = node.random_server(256 * 1024, files=3)
        backup = new_uuid()
        assert (await d.post_backup(server, backup))[0] == 202
        report = (await panel.wait_report(backup, timeout=60)).json
        assert rest.refused  # one upload was refused and retried
        assert report["successful"] is True, report
        listed = await asyncio.to_thread(snapshots, backups["restic"])
        assert [s["tags"] for s in listed] == [[f"server:{server}", f"backup:{backup}"]]


async def test_an_exclusive_lock_left_by_a_killed_prune_does_not_fail_backups(
    start_daemon: Callable[..., Any], panel: Panel, node: Node, tmp_path: Path
) -> None:
    # A prune killed while it holds the repository's exclusive lock (the OOM killer, kill -9)
    # leaves the lock behind, and restic refuses every backup while it is there.
    async with rest_repository(tmp_path) as (rest, backups):
        with capture_logs() as logs:
            # No scheduled check: its own `restic unlock` would clear the lock first.
            d = await start_daemon(remote=panel.url, verify_interval=0, **backups)
            await wait_until(
                lambda: d.app[STORES].checks.get("restic") is not None, "the restic check"
            )
            thread = d.app[STORES].checks.get("restic")
            await wait_until(lambda: not thread.is_alive(), "the restic check", timeout=60)

            # The prune takes its lock, then reads the index: it is held there and killed.
            rest.delay = lambda method, path: 60.0 if path.startswith("/index/") else 0.0
            prune = subprocess.Popen(
                ["restic", "prune"], env=oracle_env(backups["restic"]), stderr=subprocess.DEVNULL
            )
            try:
                await wait_until(
                    lambda: any(r.startswith("GET /index/") for r in rest.requests), "the prune"
                )
            finally:
                prune.kill()
                prune.wait()
            rest.delay = lambda method, path: 0.0
            assert any(r.startswith("POST /locks/") for r in rest.requests)

            server = node.server()
            backup = new_uuid()
            assert (await d.post_backup(server, backup))[0] == 202
            report = (await panel.wait_report(backup, timeout=60)).json
        assert report["successful"] is True, report
        (locked,) = [e for e in logs if e["event"] == "restic_locked"]
        assert "already locked exclusively" in locked["error"]


async def test_a_short_command_against_a_server_that_never_answers_is_stopped(
    tmp_path: Path,
) -> None:
    # Connections are accepted and never answered: restic prints no retry, so only the
    # command's own time limit ends it.
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    block = restic_block(tmp_path, f"rest:http://127.0.0.1:{port}/")
    store = ResticStore(
        parse_config({"system": {"backups": {"restic": block}}}).system.backups.restic,
        tmp_path / "cache",
        state_file=tmp_path / "forget.json",
    )
    try:
        with pytest.raises(ResticError, match=r"restic cat did not finish within 1 s"):
            await asyncio.wait_for(asyncio.to_thread(store.run, "cat", "config", timeout=1), 60)
    finally:
        for writer in held:
            writer.close()
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize(
    ("backups", "key"),
    [
        ({"store": "restic"}, "system.backups.restic.repository"),
        (
            {"store": "restic", "restic": {"repository": "/r"}},
            "system.backups.restic.password_file",
        ),
        ({"store": "s3"}, "system.backups.s3.bucket"),
        ({"store": "borg"}, "system.backups.store"),
        ({"restic": {"compression": "zstd"}}, "system.backups.restic.compression"),
        ({"restic": {"prune_interval": 0}}, "system.backups.restic.prune_interval"),
        ({"restic": {"retry_timeout": -1}}, "system.backups.restic.retry_timeout"),
        ({"restic": {"environment": ["AWS_ACCESS_KEY_ID=x"]}}, "system.backups.restic.environment"),
    ],
)
def test_a_chosen_store_without_its_settings_is_refused_naming_the_key(
    backups: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config({"system": {"backups": backups}})


def test_the_daemon_refuses_to_start_with_an_unconfigured_store(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        f"token: t\napi: {{port: {free_port()}}}\n"
        f"system: {{data: {tmp_path}/d, backup_directory: {tmp_path}/b, "
        "backups: {store: restic}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "wingsbak", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "system.backups.restic.repository" in done.stdout


def test_environment_values_are_never_logged(tmp_path: Path) -> None:
    secret = "s3cr3t-value-never-logged"
    block = {**restic_block(tmp_path), "environment": {"K": secret}}
    cfg = parse_config({"system": {"backups": {"restic": block}}})
    assert cfg.system.backups.restic.environment == {"K": secret}
    with pytest.raises(ConfigError) as err:
        parse_config({"system": {"backups": {"restic": {"environment": {"K": [secret]}}}}})
    assert secret not in str(err.value)


async def test_restic_ok_is_logged_and_a_missing_repository_created(
    start_daemon: Callable[..., Any], tmp_path: Path
) -> None:
    block = restic_backups(tmp_path)
    with capture_logs() as logs:
        d = await start_daemon(**block)
        thread = d.app[STORES].checks.get("restic")
        assert thread is not None
        await wait_until(lambda: not thread.is_alive(), "the restic check", timeout=60)
        await asyncio.sleep(0)
    events = [e["event"] for e in logs]
    assert "restic_repository_initialised" in events and "restic_ok" in events
    assert oracle(block["restic"], "cat", "config").returncode == 0
