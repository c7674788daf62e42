"""The event socket as the stock frontend expects it (issue 13, items 2 and 5), matched against
pterodactyl/wings f1c5bbd and pelican-dev/wings 090841d (router/websocket/websocket.go,
listeners.go) and the panel's WebsocketHandler.tsx (pterodactyl/panel 706db62), which fetches a
new token without a word to the user when a ``jwt error`` contains ``jwt: exp claim is
invalid`` or ``jwt: created too far in past (denylist)``, and shows "Please refresh the page"
for any other. Sockette reconnects after an abnormal close only: a socket closed normally
stays closed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import wingsbak.event_socket
from tests.support.daemon_helpers import PELICAN, PTERODACTYL, new_uuid

EXPIRED = "jwt: exp claim is invalid"


async def drain(client: Any, quiet: float) -> list[dict[str, Any]]:
    """Every message until none has come for ``quiet`` seconds."""
    got: list[dict[str, Any]] = []
    while True:
        try:
            got.append(await client.next(timeout=quiet))
        except TimeoutError:
            return got


def payload(event: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event["args"][0])
    return data


async def test_an_expired_token_keeps_the_socket_and_gets_the_jwt_error_the_frontend_renews(
    start_daemon, panel, node, open_ws, ws_token, monkeypatch
):
    # A long warning window and a short repeat let a token that expires in 3 s show both.
    monkeypatch.setattr(wingsbak.event_socket, "EXPIRY_WARNING_SECONDS", 3600)
    monkeypatch.setattr(wingsbak.event_socket, "NOTICE_INTERVAL_SECONDS", 1.0)
    daemon = await start_daemon(remote=panel.url)
    server = node.server()
    client = await open_ws(daemon, server)
    short = ws_token(server, exp=int(time.time()) + 3)
    assert (await client.auth(short))["event"] == "auth success"
    assert (await client.next(timeout=20))["event"] == "token expiring"
    seen = await client.until("jwt error", timeout=20)
    assert {e["event"] for e in seen} <= {"token expiring", "jwt error"}
    assert seen[-1]["args"] == [EXPIRED]

    # No more periodic notices from here on: what follows answers what the test does.
    monkeypatch.setattr(wingsbak.event_socket, "NOTICE_INTERVAL_SECONDS", 3600.0)
    await drain(client, quiet=1.5)
    # Still open: any message is answered with the same error...
    await client.ws.send_json({"event": "send stats", "args": []})
    got = await client.next()
    assert (got["event"], got["args"]) == ("jwt error", [EXPIRED])
    # ... and each event for the server comes as that error, not as the event.
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    instead = await drain(client, quiet=1.0)
    assert len(instead) >= 1  # "backup completed" (Wings' bus strips the ":<uuid>")
    assert {(e["event"], tuple(e["args"])) for e in instead} == {("jwt error", (EXPIRED,))}
    # The frontend's answer: a fresh token on the same socket, and events flow again.
    await client.send_auth(ws_token(server))
    assert (await client.until("auth success"))[-1]["event"] == "auth success"
    second = new_uuid()
    assert (await daemon.post_backup(server, second))[0] == 202
    assert payload((await client.until("backup completed"))[-1])["uuid"] == second
    assert not client.ws.closed


@pytest.mark.parametrize(
    ("over", "text"),
    [
        ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 700}, EXPIRED),
        ({"iat": None}, "jwt: created too far in past (denylist)"),
        ({"permissions": ["backup.read"]}, "jwt: missing connect permission"),
        ({"scope": "file-download"}, "jwt: missing connect permission"),
        ({"server_uuid": new_uuid()}, "jwt: server uuid mismatch"),
    ],
)
async def test_refusals_use_wings_texts(start_daemon, panel, node, open_ws, ws_token, over, text):
    daemon = await start_daemon(remote=panel.url)
    server = node.server()
    client = await open_ws(daemon, server)
    answer = await client.auth(ws_token(server, **over))
    assert (answer["event"], answer["args"]) == ("jwt error", [text])
    # A socket that never authenticated answers any other message the way Wings does.
    await client.ws.send_json({"event": "send logs", "args": []})
    got = await client.next()
    assert (got["event"], got["args"]) == ("jwt error", ["jwt: no jwt present"])


async def test_restore_completed_reaches_a_subuser_without_backup_read(
    start_daemon, panel, node, open_ws, ws_token
):
    """Only events starting with "backup completed" need backup.read in Wings; without
    "backup restore completed" a subuser stays on the "being restored" screen."""
    daemon = await start_daemon(remote=panel.url)
    server = node.server({"a.txt": "a"})
    subuser = await open_ws(daemon, server)
    plain = ws_token(server, permissions=["websocket.connect", "control.console"])
    assert (await subuser.auth(plain))["event"] == "auth success"
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    assert (await daemon.post_restore(server, backup))[0] == 202
    events = await subuser.until("backup restore completed")
    # Nothing of the backup before it; the console's restore lines go to every socket.
    assert {e["event"] for e in events[:-1]} == {"daemon message"}, events
    assert payload(events[-1]) == {"uuid": backup, "is_successful": True}


@pytest.mark.parametrize("flavour", [PTERODACTYL, PELICAN])
async def test_both_panels_tokens_authenticate_with_the_panel_clock_30_s_ahead(
    start_daemon, panel, node, open_ws, flavour
):
    panel.flavour, panel.clock_skew = flavour, 30
    daemon = await start_daemon(remote=panel.url)
    server = node.server()
    client = await open_ws(daemon, server)
    answer = await client.auth(panel.websocket_token(server))
    assert answer["event"] == "auth success", answer
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    assert payload((await client.until("backup completed"))[-1])["uuid"] == backup
