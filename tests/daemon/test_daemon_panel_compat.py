"""What the stock panels do with the node's answers (issue 13, items 1, 2, 3 and 6), against
the panel stand-in (panel_standin.py), matched against pterodactyl/panel 706db62,
pelican-dev/panel 235c8fb, pterodactyl/wings f1c5bbd and pelican-dev/wings 090841d."""

from __future__ import annotations

import base64
import gzip
import io
import json
import platform
import tarfile
from collections.abc import Callable
from typing import Any

import jwt
import pytest

import wingsbak
from tests.support.daemon_helpers import (
    NODE_TOKEN,
    PELICAN,
    PTERODACTYL,
    Daemon,
    Node,
    Panel,
    auth,
    new_uuid,
)
from tests.support.panel_standin import NodeConnectionError

USER_AGENT = f"Pelican Wings/v{wingsbak.__version__} (id:{{}})"


async def backup_of(daemon: Daemon, panel: Panel, node: Node) -> tuple[str, str, bytes]:
    server = node.server({"world/level.dat": b"x" * 50_000, "a.txt": "a"})
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    return server, backup, node.archive(server, backup).read_bytes()


# -- 1. User-Agent on every answer -----------------------------------------------------------


async def test_pelican_deletes_a_backup_the_node_no_longer_has(
    daemon: Daemon, panel: Panel, node: Node
) -> None:
    """Pelican's WingsBackupSchema::deleteBackup takes a 404 as "already gone" only if the 404
    passes enforceValidNodeToken, which needs the User-Agent (backup rotation relies on it)."""
    panel.flavour = PELICAN
    server, backup, _ = await backup_of(daemon, panel, node)
    node.archive(server, backup).unlink()  # the archive went missing
    await panel.delete_backup(daemon.url, server, backup)  # raised NodeConnectionError before


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/api/system", auth()),
        ("GET", "/api/system", {}),  # 401
        ("GET", "/api/system", auth("wrong")),  # 403
        ("GET", "/api/nowhere", auth()),  # 404
        ("DELETE", "/api/servers/not-a-uuid/backup/x", auth()),  # 400
        ("POST", "/api/system", auth()),  # 405
        ("GET", "/download/backup?token=x", {}),  # 401 outside /api
        ("GET", "/healthz", {}),
    ],
)
async def test_every_answer_names_the_node_as_pelican_wings(
    daemon: Daemon, method: str, path: str, headers: dict[str, str]
) -> None:
    async with daemon.request(method, path, headers=headers) as r:
        assert r.headers.get("User-Agent") == USER_AGENT.format(daemon.cfg.token_id), r.status


async def test_downloads_and_the_websocket_handshake_carry_it_too(
    daemon: Daemon, panel: Panel, node: Node
) -> None:
    server, backup, data = await backup_of(daemon, panel, node)
    token = panel.download_token(server, backup)
    async with daemon.request("GET", "/download/backup", params={"token": token}) as r:
        assert (r.status, await r.read() == data) == (200, True)
        assert r.headers["User-Agent"] == USER_AGENT.format(daemon.cfg.token_id)
    async with daemon.session.ws_connect(f"{daemon.url}/api/servers/{server}/ws") as ws:
        assert ws._response.headers["User-Agent"] == USER_AGENT.format(daemon.cfg.token_id)


async def test_pelican_catches_a_node_set_up_with_another_nodes_token_id(
    start_daemon: Callable[..., Any], panel: Panel
) -> None:
    panel.flavour = PELICAN
    d: Daemon = await start_daemon(
        remote=panel.url, config_hook=lambda raw: raw.update(token_id="AnotherNodeId123")
    )
    with pytest.raises(NodeConnectionError, match="does not match node token_id"):
        await panel.system_information(d.url)


# -- 2. tokens as Wings validates them -------------------------------------------------------


@pytest.mark.parametrize("flavour", [PTERODACTYL, PELICAN])
@pytest.mark.parametrize("skew", [30, -30, 0])
async def test_both_panels_download_tokens_with_the_panel_clock_off(
    daemon: Daemon, panel: Panel, node: Node, flavour: str, skew: int
) -> None:
    """A panel whose clock runs 30 s ahead issues tokens with ``iat`` in the node's future;
    Wings checks only the signature and ``exp`` (router/tokens/parser.go)."""
    server, backup, data = await backup_of(daemon, panel, node)
    panel.flavour, panel.clock_skew = flavour, skew
    token = panel.download_token(server, backup)
    async with daemon.request("GET", "/download/backup", params={"token": token}) as r:
        assert (r.status, await r.read() == data) == (200, True)
    # Still one-time, and still only for its server.
    async with daemon.request("GET", "/download/backup", params={"token": token}) as r:
        assert r.status == 401
    other = panel.download_token(node.server(), backup)
    async with daemon.request("GET", "/download/backup", params={"token": other}) as r:
        assert r.status in (401, 403, 404)


async def test_a_pelican_token_of_another_scope_does_not_download(
    daemon: Daemon, panel: Panel, node: Node
) -> None:
    server, backup, _ = await backup_of(daemon, panel, node)
    panel.flavour = PELICAN
    claims: dict[str, Any] = json.loads(
        _b64decode(panel.download_token(server, backup).split(".")[1])
    )
    forged = jwt.encode({**claims, "scope": "file-download"}, NODE_TOKEN, algorithm="HS256")
    async with daemon.request("GET", "/download/backup", params={"token": forged}) as r:
        assert r.status == 401


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# -- 3. Pelican Wings' local layout ----------------------------------------------------------


def _tar_gz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


async def test_a_node_taken_over_from_pelican_wings_serves_its_backups(
    daemon: Daemon, panel: Panel, node: Node
) -> None:
    """``<backup_directory>/<server>/<uuid>.tar.gz`` (pelican-dev/wings server/backup/backup.go,
    ``Path``): downloaded, restored, refused as a duplicate uuid, deleted."""
    server = node.server({"keep.txt": "current"})
    backup = new_uuid()
    archive = node.backups / server / f"{backup}.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    data = _tar_gz({"restored.txt": b"from pelican"})
    archive.write_bytes(data)
    panel.ensure(server, backup)

    token = panel.download_token(server, backup)
    async with daemon.request("GET", "/download/backup", params={"token": token}) as r:
        assert (r.status, await r.read() == data) == (200, True)

    status, answer = await daemon.post_backup(server, backup)
    assert (status, answer["error"]) == (409, "a backup with this uuid already exists on this node")

    assert (await daemon.post_restore(server, backup))[0] == 202
    assert (await panel.wait_report(backup, restore=True)).json == {"successful": True}
    assert (node.data / server / "restored.txt").read_text() == "from pelican"

    panel.flavour = PELICAN
    async with daemon.request(
        "DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()
    ) as r:
        assert r.status == 204
    assert not archive.exists()


# -- 6. GET /api/system as Wings answers it --------------------------------------------------


async def test_system_answers_wings_fields_and_pelican_accepts_them(
    daemon: Daemon, panel: Panel
) -> None:
    panel.flavour = PELICAN
    info = await panel.system_information(daemon.url)  # raised: "is not Pelican Wings !"
    assert info == {
        "architecture": info["architecture"],
        "cpu_count": info["cpu_count"],
        "kernel_version": platform.release(),
        "os": "linux",
        "version": wingsbak.__version__,
    }
    assert isinstance(info["cpu_count"], int) and info["cpu_count"] >= 1
    assert info["architecture"] in ("amd64", "arm64", "386", "arm", platform.machine())


async def test_system_v2_is_wings_full_information(daemon: Daemon) -> None:
    """Pterodactyl's telemetry asks ``?v=2`` and reads these paths."""
    async with daemon.request("GET", "/api/system?v=2", headers=auth()) as r:
        assert r.status == 200
        info = await r.json()
    assert info["version"] == wingsbak.__version__
    assert set(info["system"]) == {
        "architecture",
        "cpu_threads",
        "memory_bytes",
        "kernel_version",
        "os",
        "os_type",
    }
    assert info["system"]["os_type"] == "linux" and info["system"]["memory_bytes"] > 0
    assert set(info["docker"]) == {"version", "cgroups", "containers", "storage", "runc"}


async def test_wingsbak_status_moved_to_its_own_route(daemon: Daemon) -> None:
    async with daemon.request("GET", "/api/wingsbak", headers=auth()) as r:
        assert r.status == 200
        info = await r.json()
    assert info["daemon"] == "wingsbak" and info["jobs"]["accepting"] is True
    async with daemon.request("GET", "/api/wingsbak") as r:
        assert r.status == 401
