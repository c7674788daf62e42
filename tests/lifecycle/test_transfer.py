"""A Pelican transfer between two nodes, each wingsbak in front of a Pelican Wings stand-in: the
old node's Wings streams ``<backup_directory>/<server>/<uuid>.tar.gz`` of the backups the panel
names (pelican-dev/wings ``server/transfer/archive.go`` StreamBackups), the new node's Wings
writes them to its own ``<backup_directory>/<server>/`` (``router/router_transfer.go``), and
the new node's wingsbak serves them; the old node's deletion then removes its folder."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import PELICAN, DaemonProcess, Node, Panel, free_port, new_uuid, wait_until
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
from wings_standin import WingsStandin

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
    assert target_wings.lifecycle.received[-1]["successful"] is True
    assert sorted(target_wings.lifecycle.received[-1]["backups"]) == sorted(
        f"{b}.tar.gz" for b in (made, earlier)
    )
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
