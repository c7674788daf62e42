"""A backup that cannot read entries it was asked to include fails by default; with
``system.backups.allow_skipped: true`` it succeeds, with their count in its log line, the
metrics and the websocket ``backup completed`` event. The daemon is a real process running as
root without the capabilities that bypass file permissions, so a chmod 000 directory is
unreadable to it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.daemon_helpers import (
    WITHOUT_DAC_OVERRIDE,
    DaemonProcess,
    Node,
    Panel,
    auth,
    free_port,
    new_uuid,
    sign,
    ws_claims,
)
from wingsbak.config import ConfigError, parse_config


@pytest.fixture
def locked_server(node: Node) -> Iterator[str]:
    server = node.server({"server.properties": "motd=hello\n", "world/level.dat": "level"})
    locked = node.data / server / "locked"
    locked.mkdir()
    (locked / "inside.txt").write_text("inside")
    os.mkfifo(node.data / server / "console.pipe")  # never archived, never a failure
    locked.chmod(0o000)
    yield server
    locked.chmod(0o755)


@pytest.fixture
def unprivileged_daemon(node: Node) -> Iterator[Any]:
    made: list[DaemonProcess] = []

    def make(remote: str, **backups: Any) -> DaemonProcess:
        config = node.config_dict(remote=remote, port=free_port(), **backups)
        log = node.root / f"daemon-{len(made)}.log"
        made.append(DaemonProcess(node, config, log, command_prefix=WITHOUT_DAC_OVERRIDE))
        return made[-1]

    yield make
    for p in made:
        p.kill_if_running()


def log_events(proc: DaemonProcess, event: str) -> list[dict[str, Any]]:
    lines = proc.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            found.append(entry)
    return found


async def test_an_unreadable_directory_fails_the_backup_by_default(
    unprivileged_daemon: Any, node: Node, panel: Panel, locked_server: str
) -> None:
    proc: DaemonProcess = unprivileged_daemon(panel.url)
    await proc.start()
    backup = new_uuid()
    assert await proc.post_backup(locked_server, backup) == 202
    report = await panel.wait_report(backup)
    assert report.json["successful"] is False
    assert not node.archive(locked_server, backup).exists()
    assert node.temporaries(locked_server) == []
    assert await proc.stop() == 0
    failed = log_events(proc, "backup_failed")
    assert len(failed) == 1 and "cannot read 'locked'" in failed[0]["error"], failed
    assert "Permission denied" in failed[0]["error"]


async def test_allowed_it_succeeds_and_says_how_many_were_left_out(
    unprivileged_daemon: Any, node: Node, panel: Panel, locked_server: str
) -> None:
    proc: DaemonProcess = unprivileged_daemon(panel.url, allow_skipped=True)
    await proc.start()
    backup = new_uuid()
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{proc.url}/api/servers/{locked_server}/ws")
        await ws.send_json({"event": "auth", "args": [sign(ws_claims(locked_server))]})
        assert (await ws.receive_json(timeout=10))["event"] == "auth success"
        assert await proc.post_backup(locked_server, backup) == 202
        while True:
            message = await ws.receive_json(timeout=30)
            if message["event"] == "backup completed":
                break
        await ws.close()
        done = json.loads(message["args"][0])
        async with s.get(f"{proc.url}/metrics", headers=auth()) as r:
            metrics = await r.text()
    assert done["is_successful"] is True and done["skipped"] == 1, done
    report = await panel.wait_report(backup)
    assert report.json["successful"] is True
    assert node.archive(locked_server, backup).exists()
    assert "\nwingsbak_backup_skipped_entries_total 1.0\n" in metrics
    assert await proc.stop() == 0
    completed = log_events(proc, "backup_completed")
    assert len(completed) == 1 and completed[0]["skipped"] == 1, completed
    skipped = {e["path"]: e["reason"] for e in log_events(proc, "archive_entry_skipped")}
    assert set(skipped) == {"locked", "console.pipe"}
    assert "Permission denied" in skipped["locked"]


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_allow_skipped_must_be_true_or_false(node: Node, value: object) -> None:
    raw = node.config_dict(allow_skipped=value)
    with pytest.raises(ConfigError, match=r"system\.backups\.allow_skipped: expected true"):
        parse_config(raw)
    assert parse_config(node.config_dict()).system.backups.allow_skipped is False
