"""Start-up recovery: a journal entry whose report already waits in the outbox (the daemon
died between queueing the report and forgetting the job) is reported once, as queued."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid, wait_until


async def test_a_queued_report_is_not_doubled_by_recovery(
    start_daemon: Any, node: Node, panel: Panel
) -> None:
    server, done, lost = new_uuid(), new_uuid(), new_uuid()
    success = {
        "checksum": "ab" * 20,
        "checksum_type": "sha1",
        "size": 123,
        "successful": True,
        "parts": None,
    }
    (node.backups / ".wingsbak-outbox.json").write_text(
        json.dumps([{"id": "r1", "method": "POST", "path": f"/backups/{done}", "body": success}])
    )
    (node.backups / ".wingsbak-journal.json").write_text(
        json.dumps(
            {
                done: {"kind": "backup", "server": server, "adapter": "wings"},
                lost: {"kind": "backup", "server": server, "adapter": "wings"},
            }
        )
    )
    for backup in (done, lost):  # the panel's records of the jobs the last run left
        panel.register(server, backup)
    await start_daemon(remote=panel.url)
    await panel.wait_report(done)
    await panel.wait_report(lost)
    await asyncio.sleep(0.3)  # room for a duplicate to arrive, were one sent
    assert [r.json for r in panel.reports(done)] == [success]
    assert [r.json["successful"] for r in panel.reports(lost)] == [False]
    assert json.loads((node.backups / ".wingsbak-journal.json").read_text()) == {}


async def test_a_stop_right_after_a_report_waits_for_the_job_to_be_recorded(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    panel: Panel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM while a finished backup's report is sent and its journal entry not yet
    forgotten: the stop waits for the job, so the next start does not report it again (the
    panel refuses a second report of a completed backup)."""
    monkeypatch.setenv("WINGSBAK_FAILPOINT", "backup-reported:delay:3")
    proc = daemon_process(remote=panel.url)
    await proc.start()
    monkeypatch.delenv("WINGSBAK_FAILPOINT")
    server = node.server({"a.txt": "a"})
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    await wait_until(lambda: "failpoint_reached" in proc.logs(), "the job to be held there")
    await proc.stop()
    assert json.loads((node.backups / ".wingsbak-journal.json").read_text()) == {}
    await proc.start()
    await panel.wait_report(backup)
    await asyncio.sleep(0.5)  # room for a duplicate to arrive, were one sent
    assert [r.json["successful"] for r in panel.reports(backup)] == [True]
