"""The pass-through's edges (issue 18, items 10 and 11): an upload that stalls or breaks on
the client's side is the client's (408, or nothing to answer), never "Wings could not be
reached"; an absolute-form request target reaches Wings as the path and query aiohttp routed
on, and wingsbak's own routes and checks see the same."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from tests.support.daemon_helpers import NODE_TOKEN, new_uuid, wait_until

HANG = 20.0


async def connect(front) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = front.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def exchange(front, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` (ending with ``Connection: close``): the status and the body."""
    reader, writer = await connect(front)
    try:
        writer.write(data)
        raw = await asyncio.wait_for(reader.read(), HANG)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def upload_head(server: str, length: int) -> bytes:
    return (
        f"POST /api/servers/{server}/files/write?file=%2Fup.bin HTTP/1.1\r\n"
        f"Host: node.example\r\nAuthorization: Bearer {NODE_TOKEN}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_an_upload_that_stalls_is_the_clients_408_not_wings_unreachable(
    start_front, wings
):
    front = await start_front(api={"body_timeout": 1.0})
    server = new_uuid()
    wings.server(server)
    with capture_logs() as logs:
        status, body = await exchange(front, upload_head(server, 100_000) + b"x" * 10)
    assert status == 408, body
    assert b"stalled" in body
    events = [e["event"] for e in logs]
    assert "request_body_timeout" in events
    assert "wings_unreachable" not in events
    # Wings itself is fine meanwhile.
    status, _ = await exchange(
        front,
        f"GET /api/servers/{server} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {NODE_TOKEN}"
        "\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status == 200


async def test_a_client_gone_mid_upload_is_no_word_about_wings(start_front, wings):
    front = await start_front()
    server = new_uuid()
    wings.server(server)
    with capture_logs() as logs:
        _, writer = await connect(front)
        writer.write(upload_head(server, 100_000) + b"x" * 10)
        await writer.drain()
        path = f"/api/servers/{server}/files/write"
        await wait_until(lambda: wings.received("POST", path), "the upload to reach Wings")
        writer.close()
        await wait_until(
            lambda: any(e["event"] == "request_body_cut" for e in logs), "the cut to be seen"
        )
    assert "wings_unreachable" not in [e["event"] for e in logs]


def get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: node.example", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_an_absolute_form_target_goes_to_wings_as_path_and_query(front, wings):
    bearer = f"Authorization: Bearer {NODE_TOKEN}"
    status, body = await exchange(front, get("http://node.example/api/system?v=1", bearer))
    assert status == 200 and b"architecture" in body
    assert [(r.path, r.query) for r in wings.requests] == [("/api/system", "v=1")]
    status, _ = await exchange(front, get("foo://x/y%20z?q"))
    assert status == 404  # Wings' answer for /y%20z
    assert (wings.requests[-1].path, wings.requests[-1].query) == ("/y z", "q")
    # No path at all: nothing to route, wingsbak's own 404 (no traceback, nothing passed on).
    status, body = await exchange(front, get("http://node.example"))
    assert status == 404 and b"error" in body
    assert len(wings.requests) == 2


async def test_wingsbak_routes_see_an_absolute_form_target_as_wings_would(front, wings):
    status, body = await exchange(front, get("http://node.example/api/wingsbak"))
    assert status == 401 and b"bearer" in body  # wingsbak's own check, not skipped
    bearer = f"Authorization: Bearer {NODE_TOKEN}"
    status, body = await exchange(front, get("http://node.example/api/wingsbak", bearer))
    assert status == 200 and b"jobs" in body
    assert wings.requests == []
