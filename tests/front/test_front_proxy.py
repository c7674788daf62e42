"""The pass-through to Wings over real HTTP: what reaches the Wings stand-in and what comes
back, bodies streamed both ways, Wings down, and wingsbak's own routes beside it."""

from __future__ import annotations

import gzip
import hashlib
import os
import ssl

import aiohttp

from bench.tlscert import self_signed_certificate
from tests.support.daemon_helpers import auth, new_uuid, wait_until
from tests.support.wings_standin import WingsStandin, panel_file_token
from wingsbak.appkeys import JOBS

MIB = 1024 * 1024


async def echo(front, path_qs: str, **kw) -> tuple[aiohttp.ClientResponse, dict]:
    async with front.request(kw.pop("method", "POST"), path_qs, **kw) as r:
        return r, await r.json()


async def test_method_path_query_headers_and_body_reach_wings_unchanged(front, wings):
    body = os.urandom(100_000)
    headers = [
        ("X-Custom", "one"),
        ("X-Custom", "two"),
        ("Authorization", "Bearer whatever-the-client-sent"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "dropped: named in Connection"),
        ("Keep-Alive", "timeout=5"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Content-Type", "application/x-custom"),
    ]
    path_qs = "/echo/a%2Fb/c%20d?x=1&x=2&y=%20&z"
    r, got = await echo(front, path_qs, method="PATCH", data=body, headers=headers)
    assert r.status == 200
    assert got["method"] == "PATCH"
    assert got["path_qs"] == path_qs
    assert got["sha256"] == hashlib.sha256(body).hexdigest()
    sent = got["headers"]
    names = [k.lower() for k, _ in sent]
    assert [v for k, v in sent if k.lower() == "x-custom"] == ["one", "two"]
    assert ("Authorization", "Bearer whatever-the-client-sent") in [tuple(h) for h in sent]
    assert "x-hop" not in names and "keep-alive" not in names
    assert "connection" not in names or dict(sent).get("Connection", "").lower() == "keep-alive"
    assert dict(sent)["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert dict(sent)["X-Forwarded-Proto"] == "http"
    assert dict(sent)["Host"] == front.url.removeprefix("http://")
    assert dict(sent)["X-Forwarded-Host"] == front.url.removeprefix("http://")
    assert dict(sent)["Content-Type"] == "application/x-custom"
    assert "user-agent" not in names or dict(sent).get("User-Agent", "").startswith("Python")


async def test_status_and_headers_come_back_unchanged_without_hop_by_hop(front):
    r, got = await echo(front, "/echo/x", method="GET", headers={"X-Echo-Status": "418"})
    assert r.status == 418
    assert r.headers["X-Echo"] == "yes"
    assert "X-Drop" not in r.headers  # named in Wings' Connection header
    assert "Keep-Alive" not in r.headers
    assert got["method"] == "GET"


async def test_wings_api_system_and_its_own_auth_answers_pass_through(front, wings):
    async with front.request("GET", "/api/system", headers=auth()) as r:
        assert r.status == 200
        info = await r.json()
    assert {"architecture", "cpu_count", "kernel_version", "os", "version"} <= set(info)
    async with front.request("GET", "/api/system", headers=auth("wrong")) as r:
        assert r.status == 403
        assert await r.json() == {"error": "You are not authorized to access this endpoint."}
    async with front.request("GET", "/api/system") as r:
        assert r.status == 401
        assert "authorization" in (await r.json())["error"]
    assert len(wings.received("GET", "/api/system")) == 3


async def test_wings_down_answers_502_and_wingsbak_routes_keep_working(front, wings, node):
    await wings.stop()
    server = node.server()
    async with front.request("GET", f"/api/servers/{server}", headers=auth()) as r:
        assert r.status == 502
        body = await r.json()
    assert set(body) == {"error"} and "Wings" in body["error"]
    async with front.request("GET", "/healthz") as r:
        assert r.status == 200
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    await wings_idle(front)
    assert node.archive(server, backup).is_file()


async def wings_idle(front) -> None:
    jobs = front.app[JOBS]
    await wait_until(lambda: not jobs.backups and not jobs.restores, "jobs to end", 30.0)


async def test_file_manager_bodies_stream_both_ways(front, wings, node):
    server = new_uuid()
    wings.server(server)
    data = os.urandom(24 * MIB)
    digest = hashlib.sha256(data).hexdigest()

    async def chunks():
        for i in range(0, len(data), MIB):
            yield data[i : i + MIB]

    path = f"/api/servers/{server}/files/write?file=%2Fworld%2Fbig.bin"
    async with front.request("POST", path, data=chunks(), headers=auth()) as r:
        assert r.status == 204, await r.text()
    assert wings.received("POST", f"/api/servers/{server}/files/write")[-1].body == {
        "sha256": digest,
        "size": len(data),
    }
    path = f"/api/servers/{server}/files/contents?file=/world/big.bin"
    h = hashlib.sha256()
    async with front.request("GET", path, headers=auth()) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(len(data))
        async for chunk in r.content.iter_any():
            h.update(chunk)
    assert h.hexdigest() == digest


async def test_wings_file_links_with_their_own_jwt_pass_through(front, wings, node):
    server = new_uuid()
    wings.server(server)
    data = os.urandom(3 * MIB)
    form = aiohttp.FormData()
    form.add_field("files", data, filename="up.bin", content_type="application/octet-stream")
    token = panel_file_token(server, "file-upload")
    async with front.request("POST", f"/upload/file?token={token}&directory=/in", data=form) as r:
        assert r.status == 200, await r.text()
    assert (node.data / server / "in" / "up.bin").read_bytes() == data
    token = panel_file_token(server, "file-download", file_path="/in/up.bin")
    async with front.request("GET", f"/download/file?token={token}") as r:
        assert r.status == 200
        assert await r.read() == data
    async with front.request("GET", f"/download/file?token={token}") as r:
        assert r.status == 404  # used once already: Wings' answer, not wingsbak's
    async with front.request("GET", "/download/file?token=forged") as r:
        assert r.status == 500  # Wings' (a token its ParseToken refuses), not wingsbak's


async def test_an_https_upstream_is_verified(start_daemon, panel, node, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    wings = WingsStandin(node.data, tls=tls)
    await wings.start()
    try:
        trusting = await start_daemon(
            remote=panel.url,
            config_hook=lambda raw: raw["api"].update(upstream=wings.url, upstream_ca=str(cert)),
        )
        async with trusting.request("GET", "/api/system", headers=auth()) as r:
            assert r.status == 200 and "architecture" in await r.json()
        # Without the CA that signed it, the node's certificate is refused: nothing is sent.
        strict = await start_daemon(
            remote=panel.url, config_hook=lambda raw: raw["api"].update(upstream=wings.url)
        )
        async with strict.request("GET", "/api/system", headers=auth()) as r:
            assert r.status == 502
        assert len(wings.received("GET", "/api/system")) == 1
    finally:
        await wings.stop()


async def test_encoded_bodies_pass_as_sent_both_ways(front):
    raw = gzip.compress(b"level data " * 10_000)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    r, got = await echo(front, "/echo/gz", data=raw, headers=headers)
    assert r.status == 200
    assert got["sha256"] == hashlib.sha256(raw).hexdigest()  # not decompressed on the way
    assert dict(got["headers"])["Content-Length"] == str(len(raw))


async def test_head_and_answers_without_a_body_pass_through(front, wings):
    server = new_uuid()
    wings.server(server)
    async with front.request("GET", f"/api/servers/{server}", headers=auth()) as r:
        length = r.headers["Content-Length"]
    async with front.request("HEAD", f"/api/servers/{server}", headers=auth()) as r:
        assert r.status == 200 and r.headers["Content-Length"] == length
        assert await r.read() == b""
    async with front.request("POST", f"/api/servers/{server}/commands", headers=auth()) as r:
        assert r.status == 502  # Wings': the server is not running
        assert await r.json() == {"error": "Cannot send commands to a stopped server instance."}


async def test_wingsbak_keeps_its_own_routes_in_front(front, wings, node):
    server = node.server()
    backup = new_uuid()
    async with front.request("GET", "/download/backup?token=forged") as r:
        assert r.status == 401
    path = f"/api/servers/{server}/backup/{backup}"
    async with front.request("DELETE", path, headers=auth()) as r:
        assert r.status == 404
    async with front.request("GET", "/metrics", headers=auth()) as r:
        assert r.status == 200 and "wingsbak" in await r.text()
    async with front.request("GET", f"/api/servers/{server}/backup", headers=auth()) as r:
        assert r.status == 404  # not a route of wingsbak for GET: Wings answers it
    assert [rec.path for rec in wings.requests] == [f"/api/servers/{server}/backup"]


async def test_an_encoded_answer_comes_back_as_wings_sent_it(front):
    async with front.request(
        "GET", "/echo/gz", headers={"X-Echo-Gzip": "console log", "Accept-Encoding": "gzip"},
        auto_decompress=False,
    ) as r:
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
        raw = await r.read()
    assert r.headers["Content-Length"] == str(len(raw))
    assert gzip.decompress(raw) == b"console log"


async def test_wingsbak_status_route_stays_local_in_front(front, wings):
    async with front.request("GET", "/api/wingsbak", headers=auth()) as r:
        assert r.status == 200
        assert "jobs" in await r.json()
    async with front.request("GET", "/api/system", headers=auth()) as r:
        assert (await r.json())["version"] == "1.11.13"  # the stand-in's, not wingsbak's
    assert [rec.path for rec in wings.requests] == ["/api/system"]
