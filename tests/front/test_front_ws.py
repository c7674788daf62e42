"""The console socket relayed to the Wings stand-in, frame for frame, with wingsbak's backup
events joined in for clients whose token allows them."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.support.daemon_helpers import new_uuid, sign, wait_until, ws_claims
from wingsbak.appkeys import JOBS
from wingsbak.wings.client import WINGS

# What Wings' SendErrorJson says of an error to a token without admin.websocket.errors.
UNEXPECTED = "an unexpected error was encountered while handling this request"
CONSOLE = ["websocket.connect", "control.console", "control.start", "control.stop"]


def payload_uuid(event: dict) -> str:
    return str(json.loads(event["args"][0]).get("uuid"))


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict] = []

    async def send(self, event: str, *args: str) -> None:
        await self.ws.send_str(json.dumps({"event": event, "args": list(args)}))

    async def next(self) -> dict:
        msg = await self.ws.receive(timeout=20)
        assert msg.type == WSMsgType.TEXT, msg
        event: dict = json.loads(msg.data)
        self.seen.append(event)
        return event

    async def until(self, name: str, arg: str | None = None) -> list[dict]:
        """Events up to and including the first ``name`` (with ``arg``, if given)."""
        got: list[dict] = []
        while True:
            event = await self.next()
            got.append(event)
            if event["event"] == name and (arg is None or event.get("args") == [arg]):
                return got

    async def completed(self, backup: str) -> list[dict]:
        """Events up to and including ``backup completed`` of ``backup`` (the only name Wings'
        clients receive: its event bus strips the ``:<uuid>`` it publishes)."""
        got: list[dict] = []
        while True:
            event = await self.next()
            got.append(event)
            if event["event"] == "backup completed" and payload_uuid(event) == backup:
                return got

    async def quiet(self) -> list[str]:
        """The names of everything that arrives before an echo of a fresh console command
        (messages on one socket keep their order)."""
        sentinel = new_uuid()
        await self.send("send command", sentinel)
        return [e["event"] for e in await self.until("console output", sentinel)][:-1]


@pytest.fixture
async def connect(front, wings):
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def open_socket(server: str, permissions: list[str] | None = None) -> Client:
        ws = await front.session.ws_connect(f"{front.url}/api/servers/{server}/ws")
        opened.append(ws)
        client = Client(ws)
        claims = ws_claims(server, permissions=permissions or [*CONSOLE, "backup.read"])
        await client.send("auth", sign({**claims, "scope": "websocket"}))
        assert [e["event"] for e in await client.until("status")] == ["auth success", "status"]
        return client

    yield open_socket
    for ws in opened:
        await ws.close()


async def test_frames_go_both_ways_unchanged(front, wings, connect):
    server = new_uuid()
    wings.server(server, state="running")
    client = await connect(server)
    raw = '{"event":"send command","args":["say  hi"] }'
    await client.ws.send_str(raw)
    assert (await client.until("console output"))[-1] == {
        "event": "console output",
        "args": ["say  hi"],
    }
    await client.ws.send_bytes(b"\x00\x01binary\xff")
    await wings.push(server, b"\x02from wings\xfe")
    msg = await client.ws.receive(timeout=10)
    assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x02from wings\xfe")
    assert raw in [f for s, f in wings.ws_frames if s == server]
    assert b"\x00\x01binary\xff" in [f for s, f in wings.ws_frames if s == server]


async def test_close_codes_pass_both_ways(front, wings, connect):
    server = new_uuid()
    wings.server(server)
    client = await connect(server)
    await client.ws.close(code=4001)
    await wait_until(lambda: 4001 in wings.ws_closes, "Wings to see the client's close code")
    client = await connect(server)
    await wings.close_sockets(4002)
    msg = await client.ws.receive(timeout=10)
    assert msg.type == WSMsgType.CLOSE and msg.data == 4002


async def test_backup_events_reach_allowed_clients_of_that_server_only(
    front, wings, connect, node, panel
):
    server = node.server({"a.txt": "a" * 1000})
    other = node.server()
    wings.server(server)
    wings.server(other)
    allowed = await connect(server)
    everything = await connect(server, ["*"])
    no_backup_read = await connect(server, CONSOLE)
    other_server = await connect(other)

    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    completed = await allowed.completed(backup)
    data = json.loads(completed[-1]["args"][0])
    assert data["uuid"] == backup and data["is_successful"] is True
    await everything.completed(backup)
    # Never the suffixed name Wings publishes internally (events/events.go Publish strips it).
    later = [*await allowed.quiet(), *await everything.quiet()]
    assert not [n for n in later if n.startswith("backup")], later

    assert not [n for n in await no_backup_read.quiet() if n.startswith("backup")]
    assert not [n for n in await other_server.quiet() if n.startswith("backup")]


async def test_a_re_auth_is_read_too(front, wings, connect, node, panel):
    server = node.server({"a.txt": "a"})
    wings.server(server)
    client = await connect(server, CONSOLE)  # no backup.read at first
    first = new_uuid()
    assert (await front.post_backup(server, first))[0] == 202
    await panel.wait_report(first)
    assert not [n for n in await client.quiet() if n.startswith("backup")]

    claims = ws_claims(server, permissions=[*CONSOLE, "backup.read"])
    await client.send("auth", sign({**claims, "scope": "websocket"}))
    assert (await client.until("auth success"))[-1]["event"] == "auth success"
    second = new_uuid()
    assert (await front.post_backup(server, second))[0] == 202
    await client.completed(second)

    # A token for another server: Wings accepts it (it looks at the server at the next
    # message) and holds it from then on; no backup events go with it.
    await client.send("auth", sign({**ws_claims(new_uuid()), "scope": "websocket"}))
    assert (await client.until("auth success"))[-1]["event"] == "auth success"
    third = new_uuid()
    assert (await front.post_backup(server, third))[0] == 202
    await panel.wait_report(third)
    await client.send("send stats")  # answered after any event published before it
    assert (await client.until("jwt error"))[-1]["args"] == ["jwt: server uuid mismatch"]
    assert not [
        e for e in client.seen if e["event"] == "backup completed" and payload_uuid(e) == third
    ]


async def test_set_state_that_starts_a_server_being_restored_is_not_forwarded(
    front, wings, connect, node, panel
):
    server = node.server({"a.txt": "a"})
    s = wings.server(server)
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    client = await connect(server)
    s.state, s.stop_delay = "running", 1.0
    front.app[WINGS].poll_interval = 0.05
    assert (await front.post_restore(server, backup))[0] == 202
    await wait_until(lambda: s.state == "stopping", "the restore's stop")

    await client.send("set state", "start")
    error = (await client.until("daemon error"))[-1]
    assert error["args"][0].endswith("]: " + UNEXPECTED)  # Wings' shape (SendErrorJson)
    assert not [f for _, f in wings.ws_frames if isinstance(f, str) and "set state" in f]
    assert s.state == "stopping"

    await wait_until(lambda: server not in front.app[JOBS].restores, "the restore to end")
    await client.send("set state", "start")
    assert (await client.until("status", "running"))[-1]["args"] == ["running"]


async def test_wings_refusing_or_down_is_answered_before_the_upgrade(front, wings):
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await front.session.ws_connect(f"{front.url}/api/servers/{new_uuid()}/ws")
    assert refused.value.status == 404  # Wings does not know the server
    await wings.stop()
    with pytest.raises(aiohttp.WSServerHandshakeError) as down:
        await front.session.ws_connect(f"{front.url}/api/servers/{new_uuid()}/ws")
    assert down.value.status == 502
