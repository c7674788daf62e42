"""Restores on a live node: wingsbak asks the Wings stand-in for the server's state, stops a
running server and waits until it is offline, holds power-on (409) from the 202 until the
restore ends, and touches nothing when Wings cannot say the server is offline."""

from __future__ import annotations

from tests.support.daemon_helpers import auth, new_uuid, wait_until
from wingsbak.appkeys import JOBS
from wingsbak.wings.client import WINGS

ORIGINAL = {"world/level.dat": b"original level", "server.properties": "motd=before\n"}


async def backed_up(front, panel, node, wings, **state) -> tuple[str, str]:
    """A server (known to the stand-in, offline while backed up) and a backup of it; then its
    files change and it is put in ``state``."""
    server = node.server(dict(ORIGINAL))
    s = wings.server(server)
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    (node.data / server / "world/level.dat").write_bytes(b"changed since the backup")
    for key, value in state.items():
        setattr(s, key, value)
    front.app[WINGS].poll_interval = 0.05
    return server, backup


async def power(front, server: str, action: str) -> tuple[int, dict | None]:
    path = f"/api/servers/{server}/power"
    async with front.request("POST", path, json={"action": action}, headers=auth()) as r:
        return r.status, (await r.json() if r.status != 202 else None)


async def test_a_running_server_is_stopped_and_waited_for_and_power_on_is_held(
    start_front, panel, node, wings
):
    front = await start_front()
    server, backup = await backed_up(front, panel, node, wings, state="running", stop_delay=1.0)
    assert (await front.post_restore(server, backup))[0] == 202

    # Wings is stopping the server; the restore waits and holds every start.
    await wait_until(lambda: wings.servers[server].state == "stopping", "the stop to reach Wings")
    for action in ("start", "restart", "kill"):
        status, body = await power(front, server, action)
        assert status == 409, (action, body)
        assert "restored" in body["error"]
    assert (node.data / server / "world/level.dat").read_bytes() == b"changed since the backup"

    report = await panel.wait_report(backup, restore=True)
    assert report.json == {"successful": True}
    assert (node.data / server / "world/level.dat").read_bytes() == b"original level"
    assert wings.power_actions(server) == ["stop"]  # none of the held ones reached Wings
    states = wings.received("GET", f"/api/servers/{server}")
    assert len(states) >= 2  # asked first, then polled until offline

    await wait_until(lambda: server not in front.app[JOBS].restores, "the restore to end")
    assert await power(front, server, "start") == (202, None)
    assert wings.power_actions(server) == ["stop", "start"]
    # Wings' start: "starting" while the game boots, then "running" (server/power.go).
    await wait_until(lambda: wings.servers[server].state == "running", "the server to run")


async def test_an_offline_server_is_restored_without_a_power_action(
    start_front, panel, node, wings
):
    front = await start_front()
    server, backup = await backed_up(front, panel, node, wings)
    assert (await front.post_restore(server, backup))[0] == 202
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": True}
    assert wings.power_actions(server) == []
    assert len(wings.received("GET", f"/api/servers/{server}")) == 1
    assert (node.data / server / "world/level.dat").read_bytes() == b"original level"


async def test_a_server_that_does_not_stop_in_time_fails_the_restore_untouched(
    start_front, panel, node, wings
):
    front = await start_front(restore_stop_timeout=0.5)
    server, backup = await backed_up(front, panel, node, wings, state="running", stop_delay=None)
    assert (await front.post_restore(server, backup))[0] == 202
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": False}
    assert wings.power_actions(server) == ["stop"]
    assert wings.servers[server].state == "stopping"
    assert (node.data / server / "world/level.dat").read_bytes() == b"changed since the backup"
    await wait_until(lambda: server not in front.app[JOBS].restores, "the restore to end")
    assert await power(front, server, "start") == (202, None)  # the hold ended with it


async def test_wings_unreachable_fails_the_restore_untouched(start_front, panel, node, wings):
    front = await start_front()
    server, backup = await backed_up(front, panel, node, wings, state="running")
    await wings.stop()
    assert (await front.post_restore(server, backup))[0] == 202
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": False}
    assert (node.data / server / "world/level.dat").read_bytes() == b"changed since the backup"


async def test_power_actions_for_other_servers_and_stop_pass_during_a_restore(
    start_front, panel, node, wings
):
    front = await start_front()
    server, backup = await backed_up(front, panel, node, wings, state="running", stop_delay=1.0)
    other = new_uuid()
    wings.server(other)
    assert (await front.post_restore(server, backup))[0] == 202
    await wait_until(lambda: wings.servers[server].state == "stopping", "the stop to reach Wings")
    assert await power(front, other, "start") == (202, None)
    assert await power(front, server, "stop") == (202, None)
    status, _ = await power(front, server, "jump")
    assert status == 422  # Wings' own answer to an unknown action
    assert wings.power_actions(other) == ["start"]
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": True}
