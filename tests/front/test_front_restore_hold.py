"""The restore's power hold judged on what Wings reads (issue 18, item 3): the Wings stand-in
decodes socket frames and power bodies as Wings' Go code does (tests/support/wings_standin.py,
its own decoder), so a message Python's json reads one way and Go another is caught here. While
a restore runs, nothing reaches Wings that it would read as a start; what does reach it is what
wingsbak judged (re-encoded); outside a restore frames and bodies pass untouched."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from test_front_ws import Client

from tests.support.daemon_helpers import auth, new_uuid, sign, wait_until, ws_claims
from tests.support.wings_standin import PELICAN, PTERODACTYL, ServerState
from wingsbak.appkeys import JOBS
from wingsbak.wings.client import WINGS

CONTROL = [
    "websocket.connect",
    "control.console",
    "control.start",
    "control.stop",
    "control.restart",
    "backup.read",
]
DEEP = 1500  # past Python's json (near 1,000 levels), well within Go's 10,000


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Each starts the server in Wings (the stand-in shows it with the hold out of the way).
SOCKET_STARTS: dict[str, str | bytes] = {
    "upper-case keys": '{"EVENT":"set state","ARGS":["start"]}',
    "null in the args": '{"event":"set state","args":["start",null]}',
    "a second event key": '{"event":"send stats","Event":"set state","args":["restart"]}',
    "args read twice": '{"event":"set state","args":["start"],"args":[null]}',
    "deep nesting": '{"x":' + nested(DEEP) + ',"event":"set state","args":["start"]}',
    "split args": '{"event":"set state","args":["sta","rt"]}',
    "a large frame": '{"pad":"' + "x" * 20_000 + '","EVENT":"set state","args":["start"]}',
}
PTERODACTYL_ONLY = {"a binary frame": b'{"event":"set state","args":["start"]}'}
# encoding/json folds U+017F into s; Pterodactyl's goccy/go-json does not.
PELICAN_ONLY = {"long s": '{"event":"set state","arg\u017f":["start"]}'}

POWER_STARTS: dict[str, bytes] = {
    "upper-case key": b'{"Action":"start"}',
    "a second action key": b'{"action":"stop","ACTION":"start"}',
    "not UTF-8": b'{"action":"start","note":"\xff\xfe"}',
    "deep nesting": b'{"x":' + nested(DEEP).encode() + b',"action":"start"}',
    "text after the value": b'{"action":"start"} and then some',
    "null keeps the start": b'{"action":"restart","action":null}',
    "a large body": b'{"pad":"' + b"x" * 20_000 + b'","Action":"start"}',
}


async def restoring(front, panel, node, wings) -> tuple[str, ServerState]:
    """A server being restored: the restore has stopped it in Wings and waits (Wings keeps
    saying ``stopping``) until the test lets it go on with :func:`finish`."""
    server = node.server({"world/level.dat": b"original"})
    s = wings.server(server)
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    s.state, s.stop_delay = "running", None
    front.app[WINGS].poll_interval = 0.05
    assert (await front.post_restore(server, backup))[0] == 202
    await wait_until(lambda: s.state == "stopping", "the restore's stop")
    s.actions.clear()
    return server, s


async def finish(front, panel, server: str, s: ServerState) -> None:
    s.state = "offline"
    await wait_until(lambda: server not in front.app[JOBS].restores, "the restore to end", 30)


async def open_socket(front, server: str) -> Client:
    ws = await front.session.ws_connect(f"{front.url}/api/servers/{server}/ws")
    client = Client(ws)
    token = sign(ws_claims(server, permissions=CONTROL, scope="websocket"))
    await client.send("auth", token)
    assert [e["event"] for e in await client.until("status")] == ["auth success", "status"]
    return client


async def answers(client: Client, frame: str | bytes) -> list[str]:
    """The names of what comes back for ``frame`` (Wings handles a socket's frames in turn:
    the echo of a console command sent after it closes the list)."""
    if isinstance(frame, bytes):
        await client.ws.send_bytes(frame)
    else:
        await client.ws.send_str(frame)
    return await client.quiet()


@pytest.mark.parametrize("flavour", [PTERODACTYL, PELICAN])
async def test_no_socket_message_that_wings_reads_as_a_start_reaches_it_during_a_restore(
    start_front, panel, node, wings, flavour
):
    wings.flavour = flavour
    front = await start_front()
    server, s = await restoring(front, panel, node, wings)
    client = await open_socket(front, server)
    cases = {**SOCKET_STARTS, **(PTERODACTYL_ONLY if flavour == PTERODACTYL else PELICAN_ONLY)}
    for name, frame in cases.items():
        got = await answers(client, frame)
        assert got == ["daemon error"], (name, got)
        assert s.actions == [] and s.state == "stopping", name
    # Wings' error shape (SendErrorJson), its text only for admin.websocket.errors.
    generic = r"Error Event \[[0-9a-f-]{36}\]: an unexpected error .*"
    assert re.fullmatch(generic, client.seen[-2]["args"][0])

    # What is not a start reaches Wings as wingsbak read it; what Wings cannot read, not at all.
    before = len(wings.ws_frames)
    got = await answers(client, '{"ARGS":["say", " hi"],"Event":"send command"}')
    assert got == ["console output"]
    assert await answers(client, '{"event":"set state","args":"start"}') == []  # a type error
    assert await answers(client, b"not json") == []
    # The restore's stop holds Wings' power lock until the server is offline (server/power.go).
    # Wings runs it in a goroutine of its own: its answer comes when it fails.
    await client.ws.send_str('{"event":"set state","args":["stop"],"x":{}}')
    assert "another power action" in (await client.until("daemon error"))[-1]["args"][0]
    frames = [f for srv, f in wings.ws_frames[before:] if srv == server]
    commands = [f for f in frames if "send command" in str(f)]
    assert commands[0] == '{"event":"send command","args":["say"," hi"]}'
    assert '{"event":"set state","args":["stop"]}' in frames
    assert not [f for f in frames if "not json" in str(f) or '"args":"start"' in str(f)]
    assert s.actions == []

    await finish(front, panel, server, s)
    # Outside a restore: frames pass untouched, and a start is Wings' to run.
    raw = '{"event":"set state",  "ARGS":["start"]}'
    await client.ws.send_str(raw)
    assert (await client.until("status", "starting"))[-1]["args"] == ["starting"]
    assert raw in [f for srv, f in wings.ws_frames if srv == server]
    assert s.actions == ["start"]


async def power(front, server: str, body: bytes, token: str | None = None) -> tuple[int, bytes]:
    path = f"/api/servers/{server}/power"
    headers = {**(auth(token) if token else auth()), "Content-Type": "application/json"}
    async with front.request("POST", path, data=body, headers=headers) as r:
        return r.status, await r.read()


async def test_no_power_request_that_wings_reads_as_a_start_reaches_it_during_a_restore(
    start_front, panel, node, wings
):
    front = await start_front()
    server, s = await restoring(front, panel, node, wings)
    path = f"/api/servers/{server}/power"
    sent = len(wings.received("POST", path))  # the restore's own stop
    for name, body in POWER_STARTS.items():
        status, answer = await power(front, server, body)
        assert status == 409, (name, status, answer)
        assert "restored" in json.loads(answer)["error"], name
    # A body Wings' decoder fails on is held too (Wings would answer it 400).
    assert (await power(front, server, b'{"action":"stop",'))[0] == 409
    assert s.actions == [] and len(wings.received("POST", path)) == sent

    # Anything else reaches Wings as wingsbak read it (where it waits for the power lock the
    # restore's stop holds, up to wait_seconds: server/power.go).
    body = b'{"ACTION":"stop","Wait_Seconds":300,"x":[1]}'
    assert await power(front, server, body) == (202, b"")
    assert wings.received("POST", path)[-1].body == {
        "action": "stop",
        "wait_seconds": 300,
    }
    # A request without the node token is Wings' to refuse.
    assert (await power(front, server, b'{"action":"start"}', token="wrong"))[0] == 403
    assert s.actions == []

    await finish(front, panel, server, s)
    await wait_until(lambda: s.actions == ["stop"], "the waiting stop to run")
    status, _ = await power(front, server, POWER_STARTS["upper-case key"])
    assert status == 202
    await wait_until(lambda: s.actions == ["stop", "start"], "the start to run")


async def test_the_hold_is_not_bypassed_with_an_absolute_form_target(
    start_front, panel, node, wings
):
    front = await start_front()
    server, s = await restoring(front, panel, node, wings)
    body = b'{"action":"start"}'
    request = (
        f"POST http://node.example/api/servers/{server}/power HTTP/1.1\r\n"
        f"Host: node.example\r\nAuthorization: {auth()['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    host, port = front.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 409 "), answer[:200]
    assert s.actions == []
    await finish(front, panel, server, s)


async def test_the_daemon_process_holds_a_start_written_as_wings_reads_it(
    daemon_process, panel, node, wings
):
    proc = daemon_process(remote=panel.url)
    proc.config["api"]["upstream"] = wings.url
    await proc.start()
    server = node.server({"world/level.dat": b"original"})
    s = wings.server(server)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    await panel.wait_report(backup)
    s.state, s.stop_delay = "running", None
    assert await proc.post_restore(server, backup) == 202
    await wait_until(lambda: s.state == "stopping", "the restore's stop")
    async with aiohttp.ClientSession() as session:
        for body in (POWER_STARTS["upper-case key"], POWER_STARTS["a large body"]):
            async with session.post(
                f"{proc.url}/api/servers/{server}/power", data=body, headers=auth()
            ) as r:
                assert r.status == 409, await r.text()
    assert s.actions == ["stop"]
    s.state = "offline"
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": True}
    assert await proc.stop() == 0, proc.logs()
