"""The event socket over real HTTP: the JWT handshake, backup/restore events, several clients,
and a client that stops reading. (Expiry, Wings' texts and who gets which event, as the stock
frontend expects them: test_events_ws_wings.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import pytest

from tests.support.daemon_helpers import new_uuid
from wingsbak.appkeys import EVENTS
from wingsbak.events import EventBus

MIB = 1024 * 1024
PROGRESS_KEYS = {"uuid", "bytes_read", "bytes_total", "files", "percent"}


def payload(event: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(event.get("args"), list) and len(event["args"]) == 1, event
    assert isinstance(event["args"][0], str), event
    data: dict[str, Any] = json.loads(event["args"][0])
    return data


async def assert_quiet(client: Any, sentinel_token: str, answer: str) -> None:
    """Nothing is waiting for ``client``: a fresh ``auth`` is answered before anything else.

    Messages on one socket keep their order, so an event forwarded earlier would arrive first.
    """
    got = await client.auth(sentinel_token)
    assert got["event"] == answer, f"an event was delivered: {got!r}"


async def test_backup_sends_progress_then_one_completed_with_the_archive_checksum(
    start_daemon, panel, node, open_ws, ws_token
):
    # Uncompressed (level 0) so the archiver itself is paced by the write limit: ISA-L's
    # threaded writer would take the first ~8 MiB in at once and report progress only at the end.
    daemon = await start_daemon(remote=panel.url, write_limit=2, compression_level="none")
    server = node.random_server(6 * MIB)
    reader = await open_ws(daemon, server)
    assert (await reader.auth(ws_token(server)))["event"] == "auth success"
    everything = await open_ws(daemon, server)
    assert (await everything.auth(ws_token(server, permissions=["*"])))["event"] == "auth success"
    no_backup_read = await open_ws(daemon, server)
    plain = ws_token(server, permissions=["websocket.connect", "control.console"])
    assert (await no_backup_read.auth(plain))["event"] == "auth success"

    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    events = await reader.until("backup completed")

    progress = [payload(e) for e in events if e["event"] == "backup progress"]
    assert [e["event"] for e in events] == ["backup progress"] * len(progress) + [
        "backup completed"
    ]
    assert len(progress) >= 3, progress
    # How often the archiver reports (every 0.25 s of its clock) is tested with a clock the
    # test controls, in tests/archive/test_progress_throttle.py.
    for p in progress:
        assert set(p) == PROGRESS_KEYS, p
        assert p["uuid"] == backup
        assert 0 <= p["percent"] <= 100
    reads = [p["bytes_read"] for p in progress]
    assert reads == sorted(reads) and reads[-1] >= 6 * MIB - 6, reads
    assert [p["files"] for p in progress] == sorted(p["files"] for p in progress)
    assert progress[-1]["percent"] == 100
    assert progress[-1]["bytes_total"] == progress[-1]["bytes_read"]

    done = payload(events[-1])
    archive = node.archive(server, backup)
    blob = archive.read_bytes()
    assert done == {
        "uuid": backup,
        "is_successful": True,
        "checksum": hashlib.sha1(blob).hexdigest(),
        "checksum_type": "sha1",
        "file_size": len(blob),
    }
    report = (await panel.wait_report(backup)).json
    assert report["checksum"] == done["checksum"] and report["size"] == len(blob)

    # The '*' client saw the same stream; the client without backup.read saw none of it.
    assert [payload(e) for e in await everything.until("backup completed")] == [
        *progress,
        done,
    ]
    await assert_quiet(no_backup_read, plain, "auth success")
    # Exactly one of each: nothing more is waiting for the reader either, in particular no
    # "backup completed:<uuid>". Wings publishes that name, but its event bus strips the suffix
    # (events/events.go Publish), and the stock frontend would read it as a success whatever
    # its payload says (BackupRow.tsx).
    await assert_quiet(reader, ws_token(server), "auth success")
    await assert_quiet(everything, ws_token(server, permissions=["*"]), "auth success")


async def test_progress_is_throttled_while_archiving_many_small_files(
    start_daemon, panel, node, open_ws, ws_token
):
    # 20 000 entries: the archiver checks for progress at every one. Reports go by the clock
    # (tests/archive/test_progress_throttle.py), so far fewer come than there are entries.
    files = {f"d{d}/f{i}.txt": b"x" * 100 for d in range(40) for i in range(500)}
    daemon = await start_daemon(remote=panel.url)
    server = node.server(files)
    client = await open_ws(daemon, server)
    assert (await client.auth(ws_token(server)))["event"] == "auth success"
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    events = await client.until("backup completed")
    progress = [payload(e) for e in events if e["event"] == "backup progress"]
    assert progress, events
    assert len(progress) < len(files) // 10, len(progress)
    assert progress[-1]["files"] == len(files) + 40  # the files and their 40 folders
    assert payload(events[-1])["is_successful"] is True


async def test_restore_sends_restore_completed(
    start_daemon, panel, node, open_ws, ws_token, tmp_path
):
    daemon = await start_daemon(remote=panel.url)
    server = node.server({"world/level.dat": b"level" * 1000, "eula.txt": b"eula=true\n"})
    client = await open_ws(daemon, server)
    assert (await client.auth(ws_token(server)))["event"] == "auth success"
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    assert payload((await client.until("backup completed"))[-1])["is_successful"] is True
    (node.data / server / "eula.txt").write_bytes(b"eula=false\n")
    # The job is forgotten just after the event; wait for the node to be idle.
    await daemon.wait_idle()

    assert (await daemon.post_restore(server, backup))[0] == 202
    events = await client.until("backup restore completed")
    # The console's lines as Wings prints them (server/backup.go, router_server_backup.go).
    lines = [e["args"] for e in events[:-1] if e["event"] == "daemon message"]
    assert len(lines) == len(events) - 1, events
    assert sorted(lines[:-1]) == [["(restoring): eula.txt"], ["(restoring): world/level.dat"]]
    assert lines[-1] == ["Completed server restoration from local backup."]
    assert payload(events[-1]) == {"uuid": backup, "is_successful": True}
    assert (node.data / server / "eula.txt").read_bytes() == b"eula=true\n"
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": True}
    await assert_quiet(client, ws_token(server), "auth success")


BAD_TOKENS = {
    "wrong key": lambda s, tok, unsigned: tok(s, key="not-the-node-token-" + "x" * 40),
    "alg none": lambda s, tok, unsigned: unsigned(s),
    "expired": lambda s, tok, unsigned: tok(
        s, iat=int(time.time()) - 600, exp=int(time.time()) - 120
    ),
    "other server": lambda s, tok, unsigned: tok(new_uuid()),
    "no websocket.connect": lambda s, tok, unsigned: tok(s, permissions=["backup.read"]),
    "no permissions": lambda s, tok, unsigned: tok(s, permissions=None),
    "no user_uuid": lambda s, tok, unsigned: tok(s, user_uuid=None),
    "permissions a string": lambda s, tok, unsigned: tok(s, permissions="websocket.connect"),
    "permissions not strings": lambda s, tok, unsigned: tok(s, permissions=[{"a": 1}, ["b"]]),
    "not a JWT": lambda s, tok, unsigned: "not-a-jwt",
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_refused_token_gets_jwt_error_and_no_events(
    kind, start_daemon, panel, node, open_ws, ws_token, unsigned_token
):
    daemon = await start_daemon(remote=panel.url)
    server = node.server()
    bad = BAD_TOKENS[kind](server, ws_token, unsigned_token)
    refused = await open_ws(daemon, server)
    answer = await refused.auth(bad)
    assert answer["event"] == "jwt error", answer
    assert len(answer["args"]) == 1 and isinstance(answer["args"][0], str) and answer["args"][0]

    witness = await open_ws(daemon, server)
    assert (await witness.auth(ws_token(server)))["event"] == "auth success"
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    await witness.until("backup completed")
    await panel.wait_report(backup)
    await assert_quiet(refused, bad, "jwt error")


async def test_events_before_auth_are_not_delivered(start_daemon, panel, node, open_ws, ws_token):
    daemon = await start_daemon(remote=panel.url)
    server = node.server()
    early = await open_ws(daemon, server)
    witness = await open_ws(daemon, server)
    assert (await witness.auth(ws_token(server)))["event"] == "auth success"
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    await witness.until("backup completed")

    assert (await early.auth(ws_token(server)))["event"] == "auth success"
    await assert_quiet(early, ws_token(server), "auth success")
    # ... and it does get the next backup's events.
    second = new_uuid()
    assert (await daemon.post_backup(server, second))[0] == 202
    assert payload((await early.until("backup completed"))[-1])["uuid"] == second


async def test_reauth_with_a_fresh_token_takes_effect(start_daemon, panel, node, open_ws, ws_token):
    daemon = await start_daemon(remote=panel.url)
    server = node.server()
    client = await open_ws(daemon, server)
    first = ws_token(server, permissions=["websocket.connect"], exp=int(time.time()) + 120)
    assert (await client.auth(first))["event"] == "auth success"
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    await assert_quiet(client, first, "auth success")

    # A refused re-auth in between, then a fresh token that grants backup.read.
    assert (await client.auth("garbage"))["event"] == "jwt error"
    fresh = ws_token(server, exp=int(time.time()) + 600)
    assert (await client.auth(fresh))["event"] == "auth success"
    second = new_uuid()
    assert (await daemon.post_backup(server, second))[0] == 202
    assert payload((await client.until("backup completed"))[-1])["uuid"] == second


async def test_two_clients_receive_and_a_client_that_stops_reading_holds_nobody_up(
    start_daemon, panel, node, open_ws, ws_token, raw_ws
):
    daemon = await start_daemon(remote=panel.url, write_limit=2)
    server = node.random_server(2 * MIB)
    bus: EventBus = daemon.app[EVENTS]
    assert json.loads(await raw_ws(daemon, server, ws_token(server)))["event"] == "auth success"
    first = await open_ws(daemon, server)
    second = await open_ws(daemon, server)
    for c in (first, second):
        assert (await c.auth(ws_token(server)))["event"] == "auth success"
    assert bus.subscribers(server) == 3

    # Several MiB of events through the node's own bus: far more than the stalled client's
    # socket buffers hold, so its forwarder blocks and its queue overflows (drop-oldest),
    # while the clients that read get every one, in order.
    filler = "x" * 16384
    total = 400
    got: list[list[int]] = [[], []]

    async def read(client: Any, into: list[int]) -> None:
        while len(into) < total:
            into.append(int(payload(await client.next())["n"]))

    readers = [asyncio.create_task(read(c, g)) for c, g in zip((first, second), got, strict=True)]
    deadline = time.monotonic() + 20
    for n in range(total):
        bus.publish(server, "backup progress", {"n": n, "filler": filler})
        if n % 16 == 15:
            while min(len(g) for g in got) <= n and not any(t.done() for t in readers):
                if time.monotonic() >= deadline:  # a hang, reported as such
                    raise TimeoutError([len(g) for g in got])
                await asyncio.sleep(0.001)
    await asyncio.wait_for(asyncio.gather(*readers), 20)
    assert got == [list(range(total))] * 2
    assert bus.dropped > 0

    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    done = [payload((await c.until("backup completed"))[-1]) for c in (first, second)]
    assert done[0] == done[1]
    assert done[0]["uuid"] == backup and done[0]["is_successful"] is True
    report = (await panel.wait_report(backup)).json
    assert report["successful"] is True and report["checksum"] == done[0]["checksum"]


async def test_event_bus_drops_the_oldest_when_a_queue_is_full():
    bus = EventBus(queue_size=3)
    slow = bus.subscribe("s")
    other = bus.subscribe("t")
    for n in range(5):
        bus.publish("s", "backup progress", {"n": n})
    assert bus.dropped == 2
    kept = [json.loads(slow.get_nowait().args[0])["n"] for _ in range(slow.qsize())]
    assert kept == [2, 3, 4]
    assert other.empty()
    bus.unsubscribe("s", slow)
    assert bus.subscribers("s") == 0
