"""Events and restores as Wings shows them (issue 19, item 8), in front of the Wings stand-in:
every event Wings sends reaches the client as sent; a restore prints its files on the console
as Wings' own restores do, at most ten a second; a ``set state`` held during a restore is
answered as Wings answers a power action it refuses (the stand-in restoring a backup of its
own is the oracle); and ``Expect: 100-continue`` is Wings' to answer."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from test_front_restore_hold import CONTROL, finish, restoring
from test_front_ws import CONSOLE, Client, connect  # noqa: F401 - the fixture

from tests.support.daemon_helpers import auth, new_uuid, sign, wait_until, ws_claims
from tests.support.wings_standin import ServerState
from wingsbak.wings.hold import HELD

COUNT = re.compile(r"\(restoring\): (\d+) more files?")
ERROR_EVENT = re.compile(r"Error Event \[[0-9a-f-]{36}\]: ")


async def test_every_event_wings_sends_is_relayed_as_sent(front, wings, connect):  # noqa: F811
    server = new_uuid()
    wings.server(server, state="running")
    client = await connect(server)
    frames = [
        '{"event":"stats","args":["{\\"memory_bytes\\":1}"]}\n',
        '{"event":"install output","args":["Pulling image"]}\n',
        '{"event":"install started"}\n',
        '{"event":"install completed"}\n',
        '{"event":"transfer logs","args":["Archiving"]}\n',
        '{"event":"transfer status","args":["success"]}\n',
        '{"event":"deleted"}\n',
        '{"event":"throttled","args":["send command"]}\n',  # Pelican's
        '{"event":"backup completed","args":["{}"]}\n',  # Wings' own backups' event
        '{"event":"an event of a later Wings","args":["a","b"]}\n',
        '{"args":["no event name"]}',
    ]
    for frame in frames:
        await wings.push(server, frame)
    got = [(await client.ws.receive(timeout=20)).data for _ in frames]
    assert got == frames


async def test_a_restore_shows_its_files_on_the_relayed_console_ten_a_second(
    front, wings, connect, node, panel  # noqa: F811
):
    files = {f"world/region/r.{i}.mca": f"region {i}" for i in range(400)}
    server = node.server(files)
    wings.server(server)
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    # No backup.read: Wings prints its console lines to every authenticated socket.
    client = await connect(server, CONSOLE)
    assert (await front.post_restore(server, backup))[0] == 202
    events = await client.until("backup restore completed")

    lines = [e["args"][0] for e in events if e["event"] == "daemon message"]
    assert lines[-1] == "Completed server restoration from local backup."  # Wings' text
    named = [line.removeprefix("(restoring): ") for line in lines[:-1] if not COUNT.fullmatch(line)]
    counted = sum(int(m[1]) for line in lines[:-1] if (m := COUNT.fullmatch(line)))
    assert all(line.startswith("(restoring): ") for line in lines[:-1]), lines
    assert len(set(named)) == len(named) and set(named) <= set(files), named
    assert len(named) + counted == len(files)  # every file, named or counted once
    # The rest were counted, not named (the rate itself, ten a second, is checked on a
    # clock of the test's own in tests/archive/test_restore_console.py).
    assert counted > 0


async def test_a_failed_restore_says_so_on_the_console(start_front, wings, node, panel):
    front = await start_front(restore_stop_timeout=0.5)
    server = node.server({"a.txt": "a"})
    s = wings.server(server)
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    s.state, s.stop_delay = "running", None  # it never stops: the restore fails untouched
    client = await socket(front, server, {**ws_claims(server), "permissions": CONSOLE})
    assert (await front.post_restore(server, backup))[0] == 202
    events = await client.until("backup restore completed")
    lines = [e["args"][0] for e in events if e["event"] == "daemon message"]
    assert lines == ["Server restoration from local backup failed."]
    assert s.state == "stopping"


# -- the set state hold, answered as Wings answers --------------------------------------------


async def socket(front, server: str, claims: dict | None) -> Client:
    client = Client(await front.session.ws_connect(f"{front.url}/api/servers/{server}/ws"))
    if claims is not None:
        await client.send("auth", sign({"scope": "websocket", **claims}))
        assert (await client.until("auth success"))[-1]["event"] == "auth success"
        await client.next()  # Wings' status after a first auth (a jwt error if it cannot)
    return client


def shape(event: dict) -> tuple[str, str]:
    """An answer with the random part of Wings' error text taken out."""
    text = event.get("args", [""])[0]
    return event["event"], ERROR_EVENT.sub("Error Event [*]: ", text)


async def answer_to_start(client: Client, expect_answer: bool) -> tuple[str, str] | None:
    await client.send("set state", "start")
    if not expect_answer:
        # Wings returns before any answer (no permission): nothing comes, up to the echo of
        # a later command (Wings answers those in its reading loop, in order).
        assert not [n for n in await client.quiet() if n.endswith("error")]
        return None
    while True:
        event = await client.next()
        if event["event"] in ("daemon error", "jwt error"):
            return shape(event)


async def test_a_held_start_is_answered_as_wings_answers_during_its_own_restore(
    start_front, panel, node, wings
):
    front = await start_front(api={"websocket_auth_timeout": 600.0})
    held, s = await restoring(front, panel, node, wings)  # wingsbak restores it
    wings.servers[theirs := new_uuid()] = ServerState(restoring=True)  # Wings restores it
    frames_before = len(wings.ws_frames)
    admin = [*CONTROL, "admin.websocket.errors"]
    soon = int(time.time()) + 2
    kinds: dict[str, tuple[dict | None, bool]] = {
        "no auth": (None, True),
        "control.start": ({"permissions": CONTROL}, True),
        "no control.start": ({"permissions": ["websocket.connect", "control.console"]}, False),
        "another server's token": ({"permissions": CONTROL, "server_uuid": new_uuid()}, True),
        "an expired token": ({"permissions": CONTROL, "exp": soon}, True),
        "a revoked token": ({"permissions": CONTROL, "jti": "revoked-later"}, True),
        "admin.websocket.errors": ({"permissions": admin}, True),
    }
    sockets: dict[str, tuple[Client, Client]] = {}
    for name, (claims, _) in kinds.items():
        pair = []
        for server in (held, theirs):
            over = None if claims is None else {**ws_claims(server), **claims}
            pair.append(await socket(front, server, over))
        sockets[name] = (pair[0], pair[1])
    # The panel revokes a token: Wings refuses it at its next message, then always.
    wings.deny_jti("revoked-later")
    for client in sockets["a revoked token"]:
        await client.send("send stats")
        assert (await client.until("jwt error"))[-1]["args"] == [
            "jwt: created too far in past (denylist)"
        ]
    await wait_until(lambda: time.time() > soon + 1, "the short token to expire", 10)

    for name, (_, answers) in kinds.items():
        ours, oracle = sockets[name]
        got, wanted = await answer_to_start(ours, answers), await answer_to_start(oracle, answers)
        if name == "admin.websocket.errors":  # the error's own text: each its own
            assert wanted == ("daemon error", "Error Event [*]: server is currently being restored")
            assert got == ("daemon error", f"Error Event [*]: {HELD}")
        else:
            assert got == wanted, name
    assert s.actions == [] and s.state == "stopping"
    frames = [f for srv, f in wings.ws_frames[frames_before:] if srv == held]
    assert not [f for f in frames if "set state" in str(f)]
    await finish(front, panel, held, s)


# -- Expect: 100-continue ----------------------------------------------------------------------


async def exchange(front, head: str, body: bytes) -> tuple[bytes, bytes]:
    """Send ``head`` (with ``Expect: 100-continue``), then the body only after a 100, as
    curl does. The first answer head, and what follows the body (b"" if no 100 came)."""
    host, port = front.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode())
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        if not first.startswith(b"HTTP/1.1 100 "):
            return first, b""
        writer.write(body)
        return first, await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    finally:
        writer.close()


def request(method: str, path: str, body: bytes, token: str) -> str:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: node.example\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    )


@pytest.mark.parametrize("route", ["files/write?file=a.txt", "power"])
async def test_expect_100_continue_is_left_to_wings(front, wings, route):
    server = new_uuid()
    wings.server(server)
    body = b'{"action":"stop"}'
    path = f"/api/servers/{server}/{route}"
    token = auth()["Authorization"].removeprefix("Bearer ")

    # Wings refuses these without reading the body: its answer, never a 100 before it.
    first, _ = await exchange(front, request("POST", path, body, "wrong"), body)
    assert first.startswith(b"HTTP/1.1 403 "), first
    assert b"connection: close" in first.lower()  # Go closes: the body was never read
    unknown = f"/api/servers/{new_uuid()}/{route}"
    first, _ = await exchange(front, request("POST", unknown, body, token), body)
    if route == "power":  # wingsbak reads a power body it may hold: it sends that 100 itself
        assert first.startswith(b"HTTP/1.1 100 "), first
    else:
        assert first.startswith(b"HTTP/1.1 404 "), first

    # Wings reads it: the 100 arrives, then the answer to the body sent after it.
    first, final = await exchange(front, request("POST", path, body, token), body)
    assert first.startswith(b"HTTP/1.1 100 "), first
    assert final.startswith(b"HTTP/1.1 204 " if route != "power" else b"HTTP/1.1 202 "), final
    received = wings.received("POST", path.split("?")[0])
    assert len(received) == 2 and received[0].body is None  # the refused one: nothing read
    if route != "power":
        assert received[-1].body["size"] == len(body)
    else:
        assert received[-1].body == {"action": "stop", "wait_seconds": 0}


async def test_a_client_waiting_for_wings_100_is_not_a_stalled_body(start_daemon, panel):
    """api.body_timeout counts a body's silence; a client holding its body back until Wings'
    100 is not silent. A Wings that takes longer than that to ask for the body (here a raw
    server that waits, then reads as Go does) still gets it."""
    asked = asyncio.Event()

    async def slow_wings(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
        assert b"100-continue" in head.lower()
        await asyncio.sleep(2.5)  # past the 1 s body deadline
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        asked.set()
        body = await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_wings, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:

        def hook(raw: dict) -> None:
            raw["api"].update(upstream=f"http://127.0.0.1:{port}", body_timeout=1.0)

        front = await start_daemon(remote=panel.url, config_hook=hook)
        body = b"the body"
        first, final = await exchange(front, request("POST", "/echo/x", body, "t"), body)
        assert asked.is_set()
        assert first.startswith(b"HTTP/1.1 100 "), first
        assert final.startswith(b"HTTP/1.1 200 "), final
    finally:
        server.close()
