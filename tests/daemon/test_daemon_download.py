"""GET /download/backup?token=<JWT>: exact bytes and headers, refused tokens, one-time use,
Range resumption, the legacy Wings layout."""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import aiohttp
import pytest

from tests.support.daemon_helpers import (
    Daemon,
    Node,
    Panel,
    b64url,
    download_claims,
    new_uuid,
    sign,
    unsigned,
)


async def make_backup(daemon: Daemon, node: Node, panel: Panel) -> tuple[str, str, bytes]:
    server = node.server({"world/data.bin": os.urandom(200_000), "a.txt": "a"})
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    return server, backup, node.archive(server, backup).read_bytes()


async def download(daemon: Daemon, token: str, headers: dict[str, str] | None = None):
    async with daemon.request(
        "GET", "/download/backup", params={"token": token}, headers=headers or {}
    ) as r:
        return r.status, r.headers, await r.read()


def assert_refused(status: int, body: bytes, archive: bytes, allowed=(401,)) -> None:
    assert status in allowed, (status, body[:200])
    assert archive[:64] not in body
    assert body.startswith(b'{"error": ')


async def test_download_exact_bytes_and_headers(daemon: Daemon, node: Node, panel: Panel):
    server, backup, data = await make_backup(daemon, node, panel)
    status, headers, body = await download(daemon, sign(download_claims(server, backup)))
    assert status == 200
    assert body == data
    assert headers["Content-Type"] == "application/octet-stream"
    assert int(headers["Content-Length"]) == len(data)
    assert headers["Content-Disposition"] == f'attachment; filename="backup-{backup}.tar.gz"'


async def test_download_replayed_unique_id(daemon: Daemon, node: Node, panel: Panel):
    server, backup, data = await make_backup(daemon, node, panel)
    token = sign(download_claims(server, backup))
    assert (await download(daemon, token))[0] == 200
    status, _, body = await download(daemon, token)
    assert_refused(status, body, data)
    # A new token with the same unique_id is a replay too.
    claims = download_claims(server, backup)
    other = dict(claims, iat=claims["iat"] - 1)
    assert (await download(daemon, sign(claims)))[0] == 200
    status, _, body = await download(daemon, sign(other))
    assert_refused(status, body, data)


def _rs256_token(claims: dict) -> str:
    try:
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:  # pragma: no cover
        pytest.skip("cryptography is not installed: cannot sign an RS256 token")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return sign(claims, key, algorithm="RS256")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "exp-10**400",
        "exp-string",
        "exp-float",
        "wrong-key",
        "alg-none",
        "alg-none-signed-part",
        "rs256",
        "hs512",
        "garbage",
        "empty",
        "tampered-payload",
        "no-server_uuid",
        "no-backup_uuid",
        "no-unique_id",
        "no-exp",
        "pelican-scope-websocket",
        "numeric-unique_id",
        "server-not-uuid",
    ],
)
async def test_download_refused_tokens(daemon: Daemon, node: Node, panel: Panel, case: str):
    server, backup, data = await make_backup(daemon, node, panel)
    now = int(time.time())
    claims = download_claims(server, backup)
    if case == "expired":
        token = sign(download_claims(server, backup, iat=now - 600, exp=now - 60))
    elif case == "exp-10**400":  # past Go's int64: Wings cannot read it (was a 500 here)
        token = sign(download_claims(server, backup, exp=10**400))
    elif case == "exp-string":  # Wings reads exp into an int64: a string is unreadable
        token = sign(download_claims(server, backup, exp=str(now + 600)))
    elif case == "exp-float":
        token = sign(download_claims(server, backup, exp=now + 600.5))
    elif case == "pelican-scope-websocket":  # Pelican Wings: a token of another scope
        token = sign(download_claims(server, backup, scope="websocket"))
    elif case == "wrong-key":
        token = sign(claims, key="another-node-token-" + "fedcba9876543210" * 3)
    elif case == "alg-none":
        token = unsigned(claims)
    elif case == "alg-none-signed-part":
        # alg none, with the signature of the real key appended: still refused.
        real = sign(claims)
        header = b64url(b'{"alg":"none","typ":"JWT"}')
        token = header + real[real.index(".") :]
    elif case == "rs256":
        token = _rs256_token(claims)
    elif case == "hs512":
        token = sign(claims, algorithm="HS512")
    elif case == "garbage":
        token = "not.a.jwt"
    elif case == "empty":
        token = ""
    elif case == "tampered-payload":
        real = sign(download_claims(server, backup))
        h, _p, s = real.split(".")
        forged = b64url(
            f'{{"server_uuid":"{server}","backup_uuid":"{backup}","unique_id":"x",'
            f'"iat":{now},"exp":{now + 99999}}}'.encode()
        )
        token = f"{h}.{forged}.{s}"
    elif case.startswith("no-"):
        token = sign(download_claims(server, backup, **{case[3:]: None}))
    elif case == "numeric-unique_id":
        token = sign(download_claims(server, backup, unique_id=12345))
    elif case == "server-not-uuid":
        token = sign(download_claims("../" + server, backup))
    else:  # pragma: no cover
        raise AssertionError(case)
    status, _, body = await download(daemon, token)
    assert_refused(status, body, data)


async def test_download_wrong_server(daemon: Daemon, node: Node, panel: Panel):
    _server, backup, data = await make_backup(daemon, node, panel)
    other = node.server()
    status, _, body = await download(daemon, sign(download_claims(other, backup)))
    assert_refused(status, body, data, allowed=(401, 403, 404))
    # A server that does not exist at all.
    status, _, body = await download(daemon, sign(download_claims(new_uuid(), backup)))
    assert_refused(status, body, data, allowed=(401, 403, 404))


async def test_download_unknown_backup_is_404(daemon: Daemon, node: Node):
    server = node.server()
    status, _, body = await download(daemon, sign(download_claims(server, new_uuid())))
    assert status == 404 and body.startswith(b'{"error": ')


async def test_download_range_reassembles(daemon: Daemon, node: Node, panel: Panel):
    """A broken download resumes with the same link: ranges from a byte past 0, from the same
    address, until the end of the archive has been sent once."""
    server, backup, data = await make_backup(daemon, node, panel)
    token = sign(download_claims(server, backup))
    size = len(data)
    cuts = [0, 1, 1000, size // 3, size // 2, size - 10]
    pieces = []
    for start, end in itertools.pairwise(cuts):
        status, headers, body = await download(daemon, token, {"Range": f"bytes={start}-{end - 1}"})
        assert status == 206, (start, end, body[:100])
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert len(body) == end - start
        pieces.append(body)
    # An open-ended range to finish, as a resuming client sends.
    status, _, body = await download(daemon, token, {"Range": f"bytes={size - 10}-"})
    assert status == 206
    pieces.append(body)
    assert b"".join(pieces) == data
    # The end has been sent: the link is spent, for a fresh download and for a resume alike.
    for headers in ({}, {"Range": "bytes=100-"}, {"Range": "bytes=0-"}):
        status, _, body = await download(daemon, token, headers)
        assert_refused(status, body, data)


async def test_no_resume_from_byte_0_or_after_a_full_download(
    daemon: Daemon, node: Node, panel: Panel
):
    server, backup, data = await make_backup(daemon, node, panel)
    token = sign(download_claims(server, backup))
    status, _, first = await download(daemon, token, {"Range": "bytes=0-999"})
    assert status == 206 and first == data[:1000]
    # "bytes=0-" would be a whole second copy: a replay, not a resume.
    status, _, body = await download(daemon, token, {"Range": "bytes=0-"})
    assert_refused(status, body, data)
    other = sign(download_claims(server, backup))
    status, _, whole = await download(daemon, other)
    assert status == 200 and whole == data
    status, _, body = await download(daemon, other, {"Range": "bytes=100-"})
    assert_refused(status, body, data)


async def test_download_legacy_layout(daemon: Daemon, node: Node):
    server = node.server()
    backup = new_uuid()
    data = os.urandom(50_000)
    (node.backups / f"{backup}.tar.gz").write_bytes(data)
    status, headers, body = await download(daemon, sign(download_claims(server, backup)))
    assert status == 200
    assert body == data
    assert int(headers["Content-Length"]) == len(data)
    assert headers["Content-Disposition"] == f'attachment; filename="backup-{backup}.tar.gz"'


async def test_download_needs_no_bearer_and_ignores_one(daemon: Daemon, node: Node, panel: Panel):
    server, backup, data = await make_backup(daemon, node, panel)
    status, _, body = await download(
        daemon, sign(download_claims(server, backup)), {"Authorization": "Bearer wrong"}
    )
    assert status == 200 and body == data


async def test_range_resume_from_another_address_is_refused(
    daemon: Daemon, node: Node, panel: Panel
):
    """Only the address that used the token may resume with it (127.0.0.2 is loopback too)."""
    server, backup, data = await make_backup(daemon, node, panel)
    token = sign(download_claims(server, backup))
    status, _, body = await download(daemon, token, {"Range": "bytes=0-99"})
    assert status == 206 and body == data[:100]
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as other,
        other.get(
            daemon.url + "/download/backup",
            params={"token": token},
            headers={"Range": "bytes=100-"},
        ) as r,
    ):
        assert_refused(r.status, await r.read(), data)


async def test_used_link_stays_refused_within_the_expiry_leeway(
    daemon: Daemon, node: Node, panel: Panel
):
    """Tokens are accepted a few seconds past 'exp' (clock skew); a used one must not be."""
    server, backup, data = await make_backup(daemon, node, panel)
    token = sign(download_claims(server, backup, exp=int(time.time()) + 1))
    assert (await download(daemon, token))[0] == 200
    await asyncio.sleep(2.5)  # past exp, within the leeway
    status, _, body = await download(daemon, token)
    assert_refused(status, body, data)
