"""A Pelican transfer between two nodes, each wingsbak in front of a Pelican Wings stand-in: the
old node's Wings streams ``<backup_directory>/<server>/<uuid>.tar.gz`` of the backups the panel
names (pelican-dev/wings ``server/transfer/archive.go`` StreamBackups), the new node's Wings
writes them to its own ``<backup_directory>/<server>/`` (``router/router_transfer.go``), and
the new node's wingsbak serves them; the old node's deletion then removes its folder."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lifecycle_helpers import (
    archive_of,
    backed_up,
    call,
    download,
    in_front,
    log_events,
    logged,
    transfer_token,
)

from tests.support.daemon_helpers import (
    PELICAN,
    DaemonProcess,
    Node,
    Panel,
    free_port,
    new_uuid,
    wait_until,
)
from tests.support.wings_standin import WingsStandin

FILES = {"server.properties": "motd=moving\n", "world/level.dat": "z" * 5000}


@pytest.fixture
async def new_node(tmp_path: Path, panel: Panel) -> Any:
    """A second node: its own folders, Pelican Wings stand-in and wingsbak process."""
    node = Node(tmp_path / "new", tmp_path / "new" / "data", tmp_path / "new" / "backups")
    node.data.mkdir(parents=True)
    node.backups.mkdir()
    wings = WingsStandin(node.data)
    wings.lifecycle.backup_dir = node.backups
    await wings.start()
    made: list[DaemonProcess] = []

    def make(remote: str = "", **backups: Any) -> DaemonProcess:
        config = node.config_dict(remote=remote, port=free_port(), **backups)
        proc = DaemonProcess(node, config, node.root / "daemon.log")
        made.append(proc)
        return proc

    proc = in_front(make, node, wings, panel, PELICAN)
    await proc.start()
    yield node, wings, proc
    for p in made:
        p.kill_if_running()
    await wings.stop()


async def test_a_pelican_transfer_carries_the_backups_to_the_new_node(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    new_node: Any,
) -> None:
    target_node, target_wings, target = new_node
    proc = in_front(daemon_process, node, wings, panel, PELICAN)
    await proc.start()
    server = node.server(FILES)
    wings.server(server)
    made = await backed_up(proc, panel, server)
    # One written by an earlier wingsbak, under its own name, with its sidecar.
    earlier = new_uuid()
    data = archive_of({"earlier.txt": b"from before"})
    old = node.backups / server / f"backup-{earlier}.tar.gz"
    old.write_bytes(data)
    old.with_name(f"{old.name}.sha1").write_text(f"{hashlib.sha1(data).hexdigest()}  {old.name}\n")
    left_behind = new_uuid()  # not chosen in the panel's transfer dialog
    (node.backups / server / f"{left_behind}.tar.gz").write_bytes(archive_of({"a": b"b"}))
    expected = {made: (node.backups / server / f"{made}.tar.gz").read_bytes(), earlier: data}

    # pelican-dev/panel TransferServerService::notify: the old node is told where to send.
    body = {
        "url": f"{target.url}/api/transfers",
        "token": f"Bearer {transfer_token(server)}",
        "backups": [made, earlier],
        "server": {"uuid": server, "start_on_completion": False},
    }
    assert (await call(proc, "POST", f"/api/servers/{server}/transfer", body))[0] == 202
    await wait_until(lambda: server in wings.lifecycle.pushes, "the transfer", 30)
    assert wings.lifecycle.pushes[server] == "success", wings.lifecycle.pushes
    assert target_wings.transfers[-1] == (server, True)
    received = sorted(p.name for p in (target_node.backups / server).iterdir())
    assert received == sorted(f"{b}.tar.gz" for b in (made, earlier))
    entry = await logged(target, "server_transfer_received", server=server)
    assert entry["local_backups"] == 2

    # The new node's wingsbak serves what arrived (Wings wrote no sidecar): as Wings' own.
    target_wings.server(server)
    for backup, content in expected.items():
        assert await download(target, server, backup) == (200, content)
    assert (await download(target, server, left_behind))[0] == 404
    assert await target.post_restore(server, earlier) == 202
    restored = await panel.wait_report(earlier, restore=True, timeout=30)
    assert restored.json == {"successful": True}
    assert (target_node.data / server / "earlier.txt").read_text() == "from before"

    # ServerTransferController::success: the panel deletes the server from the old node,
    # whose Wings removes its backup folder; the new node keeps its copies.
    assert (await call(proc, "DELETE", f"/api/servers/{server}"))[0] == 204
    assert not (node.backups / server).exists()
    await logged(proc, "server_deleted", server=server, stored_backups="kept")
    assert not log_events(proc, "server_backups_removed")
    for backup, content in expected.items():
        assert await download(target, server, backup) == (200, content)


@pytest.mark.parametrize("step", ["rename-sidecar-written", "rename-archive-renamed"])
async def test_a_kill_while_earlier_archives_get_wings_name_loses_nothing(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """kill -9 inside the renaming a transfer starts with: the archive stays found with its
    checksum, and the next transfer finishes the renaming (``sha1sum -c`` passes, no stale
    sidecar)."""
    server = node.server(FILES)
    wings.server(server)
    backup = new_uuid()
    data = archive_of({"kept.txt": b"whole"})
    old = node.backups / server / f"backup-{backup}.tar.gz"
    old.parent.mkdir(parents=True)
    old.write_bytes(data)
    old.with_name(f"{old.name}.sha1").write_text(f"{hashlib.sha1(data).hexdigest()}  {old.name}\n")
    monkeypatch.setenv("WINGSBAK_FAILPOINT", f"{step}:kill")
    proc = in_front(daemon_process, node, wings, panel, PELICAN)
    await proc.start()
    monkeypatch.delenv("WINGSBAK_FAILPOINT")
    body = {
        "url": "http://127.0.0.1:9/api/transfers",
        "token": f"Bearer {transfer_token(server)}",
        "backups": [backup],
        "server": {"uuid": server},
    }
    with contextlib.suppress(aiohttp.ClientError):
        await call(proc, "POST", f"/api/servers/{server}/transfer", body)
    await wait_until(lambda: proc.proc is not None and proc.proc.poll() is not None, "the kill")
    assert proc.proc is not None and proc.proc.returncode == -signal.SIGKILL
    assert server not in wings.lifecycle.pushes  # Wings never heard of it

    await proc.start()
    assert await download(proc, server, backup) == (200, data)
    assert (await call(proc, "POST", f"/api/servers/{server}/transfer", body))[0] == 202
    await wait_until(lambda: server in wings.lifecycle.pushes, "the transfer to end")
    names = sorted(p.name for p in (node.backups / server).iterdir())
    assert names == [f"{backup}.tar.gz", f"{backup}.tar.gz.sha1"]
    subprocess.run(
        ["sha1sum", "-c", f"{backup}.tar.gz.sha1"], cwd=node.backups / server, check=True,
        capture_output=True,
    )
    assert await download(proc, server, backup) == (200, data)
