"""Console commands around a backup of a running server, through the Wings stand-in's
``POST /api/servers/{s}/commands``: before (then the settle time) and after, also when the
backup fails; none for a server that is not running."""

from __future__ import annotations

from tests.support.daemon_helpers import new_uuid

SAVE = {
    "console_before": ["save-off", "save-all flush"],
    "console_after": ["save-on"],
    "console_settle": 0.2,
}


async def test_commands_are_sent_before_and_after_a_backup_of_a_running_server(
    start_front, panel, node, wings
):
    front = await start_front(**SAVE)
    server = node.server({"world/level.dat": "x" * 10_000})
    s = wings.server(server, state="running")
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    report = await panel.wait_report(backup)
    assert report.json["successful"] is True
    # console_after goes out before the report: the archive is read by then.
    assert s.commands == ["save-off", "save-all flush", "save-on"]
    posts = wings.received("POST", f"/api/servers/{server}/commands")
    assert [p.body for p in posts] == [
        {"commands": ["save-off", "save-all flush"]},
        {"commands": ["save-on"]},
    ]


async def test_console_after_is_sent_when_the_backup_fails(start_front, panel, node, wings):
    front = await start_front(**SAVE)
    server = node.server()
    s = wings.server(server, state="running")
    backup = new_uuid()
    # The s3 adapter without node credentials asks the panel for part URLs once the archive
    # is written; the panel refuses (400, not retried), so the backup fails.
    panel.fail_first, panel.fail_status = 1, 400
    status, _ = await front.post_backup(server, backup, adapter="s3")
    assert status == 202
    assert (await panel.wait_report(backup)).json["successful"] is False
    assert s.commands == ["save-off", "save-all flush", "save-on"]


async def test_no_commands_for_a_server_that_is_not_running(start_front, panel, node, wings):
    front = await start_front(**SAVE)
    server = node.server()
    wings.server(server, state="offline")
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    assert wings.received("POST", f"/api/servers/{server}/commands") == []
    assert len(wings.received("GET", f"/api/servers/{server}")) == 2  # before, after


async def test_wings_down_costs_the_commands_not_the_backup(start_front, panel, node, wings):
    front = await start_front(**SAVE)
    server = node.server()
    await wings.stop()
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    assert node.archive(server, backup).is_file()
