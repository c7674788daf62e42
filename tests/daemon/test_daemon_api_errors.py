"""Refusals of the node API: 401, 403, 400, 404, 409, 413; every error body is exactly
``{"error": "<sentence>"}`` and leaks nothing of the node."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support.daemon_helpers import NODE_TOKEN, Daemon, Node, auth, new_uuid


def assert_error_body(body: Any, node: Node) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message.strip()
    for leak in ("Traceback", 'File "', str(node.root), "/wingsbak/", "Exception"):
        assert leak not in message, message


async def error_of(daemon: Daemon, method: str, path: str, node: Node, **kw: Any):
    async with daemon.request(method, path, **kw) as r:
        text = await r.text()
        assert r.headers.get("Content-Type", "").startswith("application/json"), text
        body = json.loads(text)
        assert_error_body(body, node)
        return r.status, dict(r.headers), body


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic x"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": NODE_TOKEN},
    ],
    ids=["missing", "basic", "bearer-empty", "bearer-space", "no-scheme"],
)
async def test_401_with_www_authenticate(daemon: Daemon, node: Node, headers: dict[str, str]):
    server = node.server()
    for method, path in (
        ("POST", f"/api/servers/{server}/backup"),
        ("DELETE", f"/api/servers/{server}/backup/{new_uuid()}"),
        ("GET", "/api/system"),
    ):
        status, resp_headers, _ = await error_of(
            daemon, method, path, node, headers=headers, json={"adapter": "wings"}
        )
        assert status == 401, (method, path)
        assert resp_headers.get("WWW-Authenticate") == "Bearer"
    assert not list(node.backups.rglob("*.tar.gz"))


async def test_403_wrong_token(daemon: Daemon, node: Node):
    server = node.server()
    for token in ("wrong", NODE_TOKEN + "x", NODE_TOKEN[:-1]):
        status, _, _ = await error_of(
            daemon,
            "POST",
            f"/api/servers/{server}/backup",
            node,
            headers=auth(token),
            json={"adapter": "wings", "uuid": new_uuid()},
        )
        assert status == 403
    assert not list(node.backups.rglob("*.tar.gz"))


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"adapter": "wings", "uuid": ',
        b"\xff\xfe\x00",
        b'[{"adapter": "wings"}]',
        b'"wings"',
        b'{"adapter": "ftp", "uuid": "%(uuid)s"}',
        b'{"uuid": "%(uuid)s"}',
        b'{"adapter": "wings"}',
        b'{"adapter": "wings", "uuid": null}',
        b'{"adapter": "wings", "uuid": 12}',
        b'{"adapter": "wings", "uuid": "%(upper)s"}',
        b'{"adapter": "wings", "uuid": "%(nodash)s"}',
        b'{"adapter": "wings", "uuid": "{%(uuid)s}"}',
        b'{"adapter": "wings", "uuid": "../../etc/passwd"}',
        b'{"adapter": "wings", "uuid": "%(uuid)s/../x"}',
        b'{"adapter": "wings", "uuid": "%(uuid)s", "ignore": 5}',
    ],
)
async def test_400_bad_body(daemon: Daemon, node: Node, body: bytes):
    server = node.server()
    u = new_uuid()
    data = (
        body.replace(b"%(uuid)s", u.encode())
        .replace(b"%(upper)s", u.upper().encode())
        .replace(b"%(nodash)s", u.replace("-", "").encode())
    )
    status, _, _ = await error_of(
        daemon,
        "POST",
        f"/api/servers/{server}/backup",
        node,
        headers={**auth(), "Content-Type": "application/json"},
        data=data,
    )
    assert status == 400, data
    assert not list(node.backups.rglob("*"))


@pytest.mark.parametrize(
    "server",
    [
        "UPPER",
        "not-a-uuid",
        "..%2F..%2Fetc",
        "..%2f%2e%2e%2fetc",
        "%2E%2E",
        "%2e%2e%2f%2e%2e",
        "{upper}",
        "{uuid}%2F..",
        "{uuid}..",
        "{uuid}%00",
        "%20{uuid}",
    ],
)
async def test_400_bad_server_id(daemon: Daemon, node: Node, server: str):
    u = node.server()
    path_server = server.replace("{uuid}", u).replace("{upper}", u.upper())
    status, _, _ = await error_of(
        daemon,
        "POST",
        f"/api/servers/{path_server}/backup",
        node,
        headers=auth(),
        json={"adapter": "wings", "uuid": new_uuid()},
    )
    # A path that aiohttp itself normalises away may not reach the route at all: 404 then.
    assert status == 400, path_server


async def test_server_with_dotdot_segments(daemon: Daemon, node: Node):
    """A literal ``../`` is normalised by the client or the server; never a backup."""
    node.server()
    for path in (
        "/api/servers/../backup",
        f"/api/servers/{new_uuid()}/../../backup",
        "/api/servers/..%2F..%2Fdata/backup",
    ):
        async with daemon.request(
            "POST",
            path,
            headers=auth(),
            json={"adapter": "wings", "uuid": new_uuid()},
        ) as r:
            assert r.status in (400, 404), path
            assert_error_body(await r.json(), node)
    assert not list(node.backups.rglob("*.tar.gz"))


async def test_400_bad_ids_on_delete(daemon: Daemon, node: Node):
    server = node.server()
    b = new_uuid()
    for path in (
        f"/api/servers/{server}/backup/{b.upper()}",
        f"/api/servers/{server}/backup/..%2F..%2Fcfg.yml",
        f"/api/servers/{server.upper()}/backup/{b}",
        f"/api/servers/..%2F/backup/{b}",
    ):
        status, _, _ = await error_of(daemon, "DELETE", path, node, headers=auth())
        assert status == 400, path


async def test_404_unknown_server(daemon: Daemon, node: Node):
    status, _, _ = await error_of(
        daemon,
        "POST",
        f"/api/servers/{new_uuid()}/backup",
        node,
        headers=auth(),
        json={"adapter": "wings", "uuid": new_uuid()},
    )
    assert status == 404
    # A server "directory" that is a file is no server either.
    fake = new_uuid()
    (node.data / fake).write_text("not a dir")
    status, _, _ = await error_of(
        daemon,
        "POST",
        f"/api/servers/{fake}/backup",
        node,
        headers=auth(),
        json={"adapter": "wings", "uuid": new_uuid()},
    )
    assert status == 404


async def test_oversized_body(daemon: Daemon, node: Node):
    server = node.server()
    limit = daemon.cfg.api.max_body_bytes
    body = json.dumps({"adapter": "wings", "uuid": new_uuid(), "ignore": "x\n" * limit})
    status, _, _ = await error_of(
        daemon,
        "POST",
        f"/api/servers/{server}/backup",
        node,
        headers={**auth(), "Content-Type": "application/json"},
        data=body.encode(),
    )
    assert status in (400, 413)
    assert not list(node.backups.rglob("*.tar.gz"))


async def test_unknown_route_and_method_are_json(daemon: Daemon, node: Node):
    status, _, _ = await error_of(daemon, "GET", "/api/nothing-here", node, headers=auth())
    assert status == 404
    status, _, _ = await error_of(daemon, "GET", "/nothing-here", node)
    assert status == 404
    status, _, _ = await error_of(
        daemon, "PUT", f"/api/servers/{node.server()}/backup", node, headers=auth()
    )
    assert status == 405


@pytest.mark.parametrize("body", [b"[" * 50_000, b'{"a": ' * 10_000], ids=["array", "object"])
async def test_deeply_nested_json_is_400(daemon: Daemon, node: Node, body: bytes):
    status, _, _ = await error_of(
        daemon,
        "POST",
        f"/api/servers/{node.server()}/backup",
        node,
        headers={**auth(), "Content-Type": "application/json"},
        data=body,
    )
    assert status == 400


@pytest.mark.parametrize(
    "credentials", [b"\xff\xfe", b"t\xc3\xb6ken", NODE_TOKEN.encode() + b"\x80"]
)
async def test_non_ascii_bearer_is_403(daemon: Daemon, node: Node, credentials: bytes):
    """Raw header bytes (not UTF-8 at all, too): a wrong token, never a 500."""
    host, port = daemon.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /api/system HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
        b"Authorization: Bearer " + credentials + b"\r\n\r\n"
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 "), raw[:200]
    assert_error_body(json.loads(body), node)
