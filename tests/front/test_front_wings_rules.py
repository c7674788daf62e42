"""wingsbak in front of a stand-in that keeps Wings' own rules (issue 19, item 9; the rules
are tests/support/wings_standin.py's section "Wings' rules, issue 19.9", each naming its Wings
file): the client address Wings reads, the power lock and the ``starting`` state, an incoming
transfer, an upload Wings reads whole, file links signed as the panels sign them, and the
routes Wings protects. What wingsbak passes through must reach Wings so that Wings' rules
give what they give without wingsbak."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time

import aiohttp
import pytest
from test_front_ws import CONSOLE, connect  # noqa: F401 - the fixture

from tests.support import wings_standin
from tests.support.daemon_helpers import auth, new_uuid, sign, wait_until
from tests.support.wings_standin import PELICAN, PTERODACTYL, panel_file_token

MIB = 1024 * 1024

# -- the client's address ----------------------------------------------------------------------


async def client_ip_seen_by_wings(url: str, wings, path: str, **headers: str) -> str:
    """Wings' ClientIP for a request from 127.0.0.2 (another loopback address than wingsbak's
    own, which is the one Wings trusts)."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url + path, headers={**auth(), **headers}) as r,
    ):
        assert r.status == 200, await r.text()
    return wings.received("GET", path)[-1].client_ip


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_wings_reads_the_clients_address_from_wingsbak_alone(
    daemon_process, wings, host
):
    proc = daemon_process()
    proc.config["api"].update(host=host, upstream=wings.url)  # 0.0.0.0: dual stack (::)
    await proc.start()
    server = new_uuid()
    wings.server(server)
    path = f"/api/servers/{server}"
    spoofed = {"X-Forwarded-For": "203.0.113.7"}

    wings.trusted_proxies = ["127.0.0.1"]  # the README's edit of Wings' file: wingsbak
    assert await client_ip_seen_by_wings(proc.url, wings, path) == "127.0.0.2"
    assert await client_ip_seen_by_wings(proc.url, wings, path, **spoofed) == "127.0.0.2"
    # Trusting the client's own proxy as well, Wings takes the address that proxy forwarded.
    wings.trusted_proxies = ["127.0.0.1", "127.0.0.2/32"]
    assert await client_ip_seen_by_wings(proc.url, wings, path, **spoofed) == "203.0.113.7"
    # Wings' default (no trusted proxy): it sees wingsbak.
    wings.trusted_proxies = []
    assert await client_ip_seen_by_wings(proc.url, wings, path, **spoofed) == "127.0.0.1"
    assert await proc.stop() == 0, proc.logs()


# -- power: the lock and the starting state ---------------------------------------------------


async def test_wings_power_lock_and_starting_state_reach_the_console(front, wings, connect):  # noqa: F811
    server = new_uuid()
    s = wings.server(server, start_lock=600.0, start_delay=None)  # a container slow to start
    client = await connect(server, [*CONSOLE, "control.restart"])
    await client.send("set state", "start")
    await client.until("status", "starting")
    # The start holds Wings' power lock: a second action is refused at once on the socket...
    await client.send("set state", "restart")
    error = (await client.until("daemon error"))[-1]["args"][0]
    assert error.endswith("another power action is currently being processed for this server, "
                          "please try again later")
    # ... and after the 202 over HTTP (wait_seconds 0: no wait), where Wings only logs it.
    path = f"/api/servers/{server}/power"
    body = {"action": "restart", "wait_seconds": 0}
    async with front.request("POST", path, json=body, headers=auth()) as r:
        assert r.status == 202
    await wait_until(lambda: any("PowerLocked" in e for e in wings.errors), "Wings' log line")
    assert s.actions == ["start"] and s.state == "starting"
    # kill does not wait for the lock.
    await client.send("set state", "kill")
    await client.until("status", "offline")
    assert s.actions == ["start", "kill"]


async def test_a_start_of_a_running_server_is_wings_error(front, wings, connect):  # noqa: F811
    server = new_uuid()
    s = wings.server(server)
    client = await connect(server)
    await client.send("set state", "start")
    await client.until("status", "running")
    await client.send("set state", "start")
    error = (await client.until("daemon error"))[-1]["args"][0]
    assert error.endswith("]: an unexpected error was encountered while handling this request")
    admin = await connect(server, [*CONSOLE, "admin.websocket.errors"])
    await admin.send("set state", "start")
    assert (await admin.until("daemon error"))[-1]["args"][0].endswith("]: server is running")
    assert s.actions == ["start", "start", "start"] and s.state == "running"


# -- an incoming transfer ---------------------------------------------------------------------


def tar_gz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def transfer_form(
    flavour: str, archive: bytes, backups: dict[str, bytes], bad: bool
) -> aiohttp.FormData:
    """The body the old node's Wings streams (server/transfer/source.go PushArchiveToTarget;
    Pelican's archive.go StreamBackups)."""
    form = aiohttp.FormData()
    form.add_field("archive", archive, filename="archive.tar.gz")
    checksum = hashlib.sha256(archive + (b"x" if bad else b"")).hexdigest()
    form.add_field("checksum_archive" if flavour == PELICAN else "checksum", checksum)
    for name, data in backups.items():
        form.add_field(f"backup_{name}", data, filename=name)
        form.add_field(f"checksum_backup_{name}", hashlib.sha256(data).hexdigest())
    return form


@pytest.mark.parametrize("flavour", [PTERODACTYL, PELICAN])
async def test_an_incoming_transfer_reaches_wings_as_it_takes_one(
    start_front, wings, node, flavour
):
    wings.flavour = flavour
    front = await start_front()
    server = new_uuid()
    archive = tar_gz({"world/level.dat": b"moved level", "eula.txt": b"eula=true\n"})
    backups = {}
    if flavour == PELICAN:  # Pelican carries <backup_directory>/<server>/*.tar.gz along
        backups[f"{new_uuid()}.tar.gz"] = gzip.compress(os.urandom(1000))
    now = int(time.time())
    claims = {"sub": server, "iat": now, "exp": now + 600, "jti": new_uuid()}
    token = sign({**claims, "scope": "transfer"} if flavour == PELICAN else claims)

    async with front.request("POST", "/api/transfers", data=b"{}") as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"  # Wings' answer
    form = transfer_form(flavour, archive, backups, bad=True)
    headers = {"Authorization": f"Bearer {token}"}
    async with front.request("POST", "/api/transfers", data=form, headers=headers) as r:
        assert r.status == 500  # checksums that do not match: Wings fails the transfer
    assert wings.transfers == [(server, False)] and server not in wings.servers

    form = transfer_form(flavour, archive, backups, bad=False)
    async with front.request("POST", "/api/transfers", data=form, headers=headers) as r:
        assert r.status == 200, await r.text()
    assert wings.transfers[-1] == (server, True) and server in wings.servers
    assert (node.data / server / "world/level.dat").read_bytes() == b"moved level"
    for name, data in backups.items():  # Pelican's: <backup_directory>/<server>/<name>
        assert (node.backups / server / name).read_bytes() == data


# -- an upload Wings reads whole --------------------------------------------------------------


async def test_an_upload_is_read_whole_by_wings_before_it_answers(
    front, wings, node, monkeypatch
):
    # Parts beyond 1 MiB go to a temporary file, as beyond gin's 32 MiB in Wings.
    monkeypatch.setattr(wings_standin, "MULTIPART_MEMORY", MIB)
    wings.upload_limit = 2  # MB
    server = new_uuid()
    wings.server(server)
    small, other, big = os.urandom(MIB + 1), os.urandom(MIB + 2), os.urandom(3 * MIB)

    def form(*files: tuple[str, bytes]) -> aiohttp.FormData:
        f = aiohttp.FormData()
        for name, data in files:
            f.add_field("files", data, filename=name, content_type="application/octet-stream")
        return f

    url = f"/upload/file?directory=/up&token={panel_file_token(server, 'file-upload')}"
    async with front.request("POST", url, data=form(("a.bin", small), ("big.bin", big))) as r:
        assert r.status == 400
        assert (await r.json())["error"] == (
            "File big.bin is larger than the maximum file upload size of 2 MB."
        )
    assert not (node.data / server / "up").exists()  # every size is checked before a write

    url = f"/upload/file?directory=/up&token={panel_file_token(server, 'file-upload')}"
    async with front.request("POST", url, data=form(("a.bin", small), ("b.bin", other))) as r:
        assert r.status == 200, await r.text()
    assert (node.data / server / "up/a.bin").read_bytes() == small
    assert (node.data / server / "up/b.bin").read_bytes() == other
    async with front.request("POST", url, data=form(("c.bin", small))) as r:
        assert r.status == 404  # the link's unique_id was used


# -- file links and protected routes ----------------------------------------------------------


@pytest.mark.parametrize("flavour", [PTERODACTYL, PELICAN])
async def test_file_links_are_judged_by_wings_as_the_panels_sign_them(
    front, wings, node, flavour
):
    wings.flavour = flavour
    server = node.server({"a.txt": "a"})
    wings.server(server)
    url = f"/download/file?token={panel_file_token(server, 'file-download', file_path='a.txt')}"
    async with front.request("GET", url) as r:
        assert r.status == 200 and await r.read() == b"a"  # aud, nbf, iat: as the panel sends
    wrong_scope = panel_file_token(server, "file-upload", file_path="a.txt")
    async with front.request("GET", f"/download/file?token={wrong_scope}") as r:
        assert r.status == (404 if flavour == PELICAN else 200)
    no_exp = panel_file_token(server, "file-download", file_path="a.txt", exp=None)
    async with front.request("GET", f"/download/file?token={no_exp}") as r:
        assert r.status == 500  # gbrlsnchs/jwt's ExpirationTimeValidator needs an exp


async def test_wings_own_bearer_answers_pass_through(front, wings):
    server = new_uuid()
    wings.server(server)
    # Go trims a header's value: "Bearer " is "Bearer", one word (middleware.go SplitN).
    cases = (("", 401), ("Bearer", 401), ("Bearer ", 401), ("bearer x", 401), ("Bearer x", 403))
    for header, status in cases:
        async with front.request(
            "GET", f"/api/servers/{server}", headers={"Authorization": header}
        ) as r:
            assert r.status == status, header
            if status == 401:
                assert r.headers["WWW-Authenticate"] == "Bearer"
