"""Who gets backup events on the relayed console socket (issue 18, items 6 and 8): only a
socket whose token Wings accepted (the stand-in refuses tokens as Wings does: the denylist by
``iat``, permissions, Pelican's scope) and wingsbak's own check allows, until Wings says the
token expired or was refused; and a socket that never authenticates is closed after
``api.websocket_auth_timeout``, with its socket to Wings."""

from __future__ import annotations

import json

import pytest
from aiohttp import WSCloseCode, WSMsgType
from test_front_ws import CONSOLE, Client, payload_uuid

import wingsbak.wings.relay
from tests.support.daemon_helpers import new_uuid, sign, wait_until, ws_claims
from tests.support.wings_standin import PELICAN

EVENTS = [*CONSOLE, "backup.read"]


def token(server: str, permissions: list[str] | None = None, **over) -> str:
    over.setdefault("scope", "websocket")
    return sign(ws_claims(server, permissions=permissions or EVENTS, **over))


async def open_socket(front, server: str) -> Client:
    return Client(await front.session.ws_connect(f"{front.url}/api/servers/{server}/ws"))


async def authed(front, server: str, permissions: list[str] | None = None) -> Client:
    client = await open_socket(front, server)
    await client.send("auth", token(server, permissions))
    assert [e["event"] for e in await client.until("status")] == ["auth success", "status"]
    return client


async def backup_seen_by(front, panel, server: str, witness: Client) -> str:
    """A backup of ``server``, once ``witness`` (a socket that gets the events) saw it end."""
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    await witness.completed(backup)
    await panel.wait_report(backup)
    return backup


async def backup_events(client: Client) -> list[tuple[str, str]]:
    """Backup events (name, the backup's uuid) that reached ``client`` up to an answer of
    Wings' to a fresh message (so after every event published before it)."""
    await client.send("send stats")
    got: list[tuple[str, str]] = []
    while True:
        event = await client.next()
        if event["event"] in ("stats", "jwt error"):
            return got
        if event["event"].startswith("backup"):
            got.append((event["event"], payload_uuid(event)))


@pytest.mark.parametrize(
    "refused",
    [
        "issued before Wings booted",  # Wings' denylist; wingsbak sees an iat and no more
        "another user's revoked jti",
        "Pelican: no websocket scope",
    ],
)
async def test_a_token_wings_refuses_gets_no_backup_events(
    start_front, panel, node, wings, refused
):
    front = await start_front(api={"websocket_auth_timeout": 600.0})
    server = node.server({"a.txt": "a"})
    wings.server(server)
    witness = await authed(front, server)
    client = await open_socket(front, server)
    if refused == "issued before Wings booted":
        bad = token(server, iat=int(wings.boot_time) - 3600)
    elif refused == "another user's revoked jti":
        wings.deny_jti("revoked")
        bad = token(server, iat=int(wings.boot_time), jti="revoked")
    else:
        wings.flavour = PELICAN
        bad = token(server, scope=None)
    await client.send("auth", bad)
    assert (await client.until("jwt error"))[-1]["event"] == "jwt error"
    await backup_seen_by(front, panel, server, witness)
    assert await backup_events(client) == []


async def test_events_stop_when_wings_refuses_the_token_in_force_and_come_back(
    front, panel, node, wings
):
    server = node.server({"a.txt": "a"})
    wings.server(server)
    witness = await authed(front, server)
    client = await authed(front, server)
    first = await backup_seen_by(front, panel, server, witness)
    assert ("backup completed", first) in await backup_events(client)

    # The panel revokes the user's tokens: Wings refuses the one in force at the next message.
    user = new_uuid()
    await client.send("auth", token(server, user_uuid=user, jti=user, iat=int(wings.boot_time)))
    await client.until("auth success")
    wings.deny_jti(user)
    await client.send("send stats")
    error = await client.until("jwt error")
    assert error[-1]["args"] == ["jwt: created too far in past (denylist)"]
    await backup_seen_by(front, panel, server, witness)
    assert await backup_events(client) == []

    # A token Wings accepts but for another server: Wings holds it, wingsbak allows nothing.
    await client.send("auth", token(new_uuid()))
    await client.until("auth success")
    await backup_seen_by(front, panel, server, witness)
    assert await backup_events(client) == []

    # A fresh token of this server: events again.
    await client.send("auth", token(server))
    await client.until("auth success")
    last = await backup_seen_by(front, panel, server, witness)
    assert ("backup completed", last) in await backup_events(client)


async def test_two_auths_at_once_leave_the_events_to_the_token_wings_holds(
    front, panel, node, wings
):
    server = node.server({"a.txt": "a"})
    wings.server(server)
    witness = await authed(front, server)
    client = await open_socket(front, server)
    # Wings accepts the first (no backup.read) and refuses the second (denylisted): it holds
    # the first. Sent back to back, without waiting for the answers.
    await client.send("auth", token(server, CONSOLE))
    await client.send("auth", token(server, iat=int(wings.boot_time) - 3600))
    await client.until("jwt error")
    await backup_seen_by(front, panel, server, witness)
    assert await backup_events(client) == []


async def test_a_socket_without_auth_success_is_closed_with_its_socket_to_wings(
    start_front, panel, node, wings
):
    front = await start_front(api={"websocket_auth_timeout": 1.0})
    server = node.server({"a.txt": "a"})
    wings.server(server)
    silent = await open_socket(front, server)
    refused = await open_socket(front, server)
    await refused.send("auth", token(server, iat=int(wings.boot_time) - 3600))
    assert (await refused.until("jwt error"))[-1]["event"] == "jwt error"
    client = await authed(front, server)
    await wait_until(lambda: len(wings.sockets) == 3, "the three sockets to reach Wings")
    for ws in (silent.ws, refused.ws):
        msg = await ws.receive(timeout=20)
        assert msg.type == WSMsgType.CLOSE, msg
        assert msg.data == WSCloseCode.POLICY_VIOLATION and "auth" in msg.extra
    await wait_until(lambda: len(wings.sockets) == 1, "Wings' side of both to close")
    # The authenticated socket outlives the deadline and still gets its events.
    await backup_seen_by(front, panel, server, client)
    assert not client.ws.closed


async def test_an_auth_wings_never_answers_holds_the_next_frames_only_for_a_while(
    front, panel, node, wings, monkeypatch
):
    monkeypatch.setattr(wingsbak.wings.relay, "AUTH_ANSWER_SECONDS", 0.5)
    wings.flavour = PELICAN  # drops binary frames without a word
    server = node.server({"a.txt": "a"})
    wings.server(server)
    witness = await authed(front, server)
    client = await open_socket(front, server)
    await client.ws.send_bytes(json.dumps({"event": "auth", "args": [token(server)]}).encode())
    await client.send("send stats")
    assert (await client.next())["args"] == ["jwt: no jwt present"]
    # The next auth is answered, and it alone: its success grants the events.
    await client.send("auth", token(server))
    await client.until("auth success")
    backup = await backup_seen_by(front, panel, server, witness)
    assert ("backup completed", backup) in await backup_events(client)
