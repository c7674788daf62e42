"""Start-up recovery: a journal entry whose report already waits in the outbox (the daemon
died between queueing the report and forgetting the job) is reported once, as queued."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from daemon_helpers import Node, Panel, new_uuid


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
