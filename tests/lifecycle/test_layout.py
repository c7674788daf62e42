"""Local backups named and placed as the fronted Wings names its own (pelican-dev/wings
``server/backup/backup.go`` Path: ``<backup_directory>/<server>/<uuid>.tar.gz``; pterodactyl/
wings: ``<backup_directory>/<uuid>.tar.gz``), standalone as Pelican does, the flat name's
server recorded, and backups written before found in every layout. The daemon runs as a
process in front of the Wings stand-in."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from lifecycle_helpers import archive_of, backed_up, call, download, in_front, log_events

from tests.support.daemon_helpers import (
    PELICAN,
    PTERODACTYL,
    DaemonProcess,
    Node,
    Panel,
    new_uuid,
    panel_knows,
)
from tests.support.wings_standin import WingsStandin

FILES = {"server.properties": "motd=layout\n", "world/level.dat": "x" * 3000}


def archives(node: Node) -> list[str]:
    """Every archive, sidecar and temporary file under the backup directory, relative."""
    return sorted(
        str(p.relative_to(node.backups))
        for p in node.backups.rglob("*")
        if p.is_file() and ".tar.gz" in p.name
    )


def sidecar_checks(archive: Path) -> None:
    """``sha1sum -c`` in the archive's folder: the sidecar names the archive as it is."""
    subprocess.run(
        ["sha1sum", "-c", f"{archive.name}.sha1"], cwd=archive.parent, check=True,
        capture_output=True,
    )


@pytest.mark.parametrize("flavour", [PELICAN, PTERODACTYL])
async def test_a_backup_is_named_and_placed_as_the_fronted_wings_names_its_own(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    flavour: str,
) -> None:
    proc = in_front(daemon_process, node, wings, panel, flavour)
    await proc.start()
    server = node.server(FILES)
    wings.server(server)
    backup = await backed_up(proc, panel, server)
    if flavour == PELICAN:
        archive = node.backups / server / f"{backup}.tar.gz"
        expected = [
            f"{server}/{backup}.tar.gz",
            f"{server}/{backup}.tar.gz.index",
            f"{server}/{backup}.tar.gz.sha1",
        ]
    else:
        archive = node.backups / f"{backup}.tar.gz"
        expected = [f"{backup}.tar.gz", f"{backup}.tar.gz.index", f"{backup}.tar.gz.sha1"]
        record = json.loads((node.backups / ".wingsbak-backup-servers.json").read_text())
        assert record == {backup: server}
    assert archives(node) == expected
    sidecar_checks(archive)
    report = panel.reports(backup)[0].json
    assert report["checksum"] == hashlib.sha1(archive.read_bytes()).hexdigest()
    status, body = await download(proc, server, backup)
    assert (status, body) == (200, archive.read_bytes())
    assert log_events(proc, "wings_flavour_learnt", flavour=flavour)


async def test_the_flavour_is_learnt_from_answers_passed_through_and_kept(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
) -> None:
    """Pterodactyl first (an answer without Pelican's User-Agent), Pelican after an answer
    with it, and Pterodactyl again: a daemon started while Wings is down remembers it."""
    proc = in_front(daemon_process, node, wings, panel, PTERODACTYL)
    await proc.start()
    server = node.server(FILES)
    wings.server(server)
    assert (await call(proc, "GET", f"/api/servers/{server}"))[0] == 200
    first = await backed_up(proc, panel, server)
    assert (node.backups / f"{first}.tar.gz").is_file()

    wings.flavour = PELICAN  # the operator replaced Wings
    assert (await call(proc, "GET", f"/api/servers/{server}", token="wrong"))[0] == 403
    second = await backed_up(proc, panel, server)
    assert (node.backups / server / f"{second}.tar.gz").is_file()

    wings.flavour = PTERODACTYL
    assert (await call(proc, "GET", f"/api/servers/{server}"))[0] == 200
    await proc.stop()
    await wings.stop()  # Wings is down while wingsbak starts and backs up
    await proc.start()
    third = await backed_up(proc, panel, server)
    assert (node.backups / f"{third}.tar.gz").is_file(), archives(node)
    # The backups never had to ask Wings which it is.
    assert not wings.received("GET", "/api/system")


async def test_a_configured_flavour_wins_over_wings_answers(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
) -> None:
    api = {"upstream_flavour": PTERODACTYL}
    proc = in_front(daemon_process, node, wings, panel, PELICAN, api=api)
    await proc.start()
    server = node.server(FILES)
    wings.server(server)
    assert (await call(proc, "GET", f"/api/servers/{server}"))[0] == 200
    backup = await backed_up(proc, panel, server)
    assert archives(node) == [f"{backup}.tar.gz", f"{backup}.tar.gz.index", f"{backup}.tar.gz.sha1"]
    assert log_events(proc, "wings_flavour_differs_from_forced", seen=PELICAN)


async def test_standalone_keeps_pelicans_layout(
    daemon_process: Callable[..., DaemonProcess], node: Node, panel: Panel
) -> None:
    proc = daemon_process(remote=panel.url)
    await proc.start()
    server = node.server(FILES)
    backup = await backed_up(proc, panel, server)
    assert archives(node) == [
        f"{server}/{backup}.tar.gz",
        f"{server}/{backup}.tar.gz.index",
        f"{server}/{backup}.tar.gz.sha1",
    ]
    sidecar_checks(node.backups / server / f"{backup}.tar.gz")


async def test_a_flat_backup_is_never_served_for_another_server(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
) -> None:
    proc = in_front(daemon_process, node, wings, panel, PTERODACTYL)
    await proc.start()
    owner, other = node.server(FILES), node.server(FILES)
    wings.server(owner)
    wings.server(other)
    backup = await backed_up(proc, panel, owner)
    archive = node.backups / f"{backup}.tar.gz"
    assert archive.is_file()

    assert (await download(proc, other, backup))[0] == 404
    panel_knows(panel.url, other, backup)
    body = {"adapter": "wings", "truncate_directory": True}
    path = f"/api/servers/{other}/backup/{backup}"
    assert (await call(proc, "POST", f"{path}/restore", body))[0] == 404
    assert (await call(proc, "DELETE", path))[0] == 404
    assert archive.is_file()
    assert log_events(proc, "backup_of_another_server", owner=owner, server=other)
    # The same uuid again, for any server: the node already has it.
    assert await proc.post_backup(other, backup) == 409

    status, data = await download(proc, owner, backup)
    assert (status, data) == (200, archive.read_bytes())
    assert (await call(proc, "DELETE", f"/api/servers/{owner}/backup/{backup}"))[0] == 204
    assert archives(node) == []
    record = node.backups / ".wingsbak-backup-servers.json"
    assert json.loads(record.read_text()) == {}


@pytest.mark.parametrize("flavour", [PELICAN, PTERODACTYL])
async def test_backups_written_before_stay_found(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    flavour: str,
) -> None:
    """wingsbak's earlier ``<server>/backup-<uuid>.tar.gz`` (with its sidecar), Pelican's
    ``<server>/<uuid>.tar.gz`` and Pterodactyl's ``<uuid>.tar.gz`` (Wings' own: no sidecar, no
    record): downloaded, restored, refused as a duplicate and deleted, whatever the Wings."""
    proc = in_front(daemon_process, node, wings, panel, flavour)
    await proc.start()
    server = node.server(FILES)
    wings.server(server)
    made: dict[str, tuple[str, Path, bytes]] = {}
    for layout in ("earlier", "pelican", "flat"):
        backup = new_uuid()
        data = archive_of({"restored.txt": layout.encode()})
        path = {
            "earlier": node.backups / server / f"backup-{backup}.tar.gz",
            "pelican": node.backups / server / f"{backup}.tar.gz",
            "flat": node.backups / f"{backup}.tar.gz",
        }[layout]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if layout == "earlier":
            sha1 = hashlib.sha1(data).hexdigest()
            Path(f"{path}.sha1").write_text(f"{sha1}  {path.name}\n")
        made[backup] = (layout, path, data)
    for backup, (layout, path, data) in made.items():
        assert await download(proc, server, backup) == (200, data)
        assert await proc.post_backup(server, backup) == 409
        assert await proc.post_restore(server, backup) == 202
        restored = await panel.wait_report(backup, restore=True, timeout=30)
        assert restored.json == {"successful": True}
        assert (node.data / server / "restored.txt").read_text() == layout
        status, _ = await call(proc, "DELETE", f"/api/servers/{server}/backup/{backup}")
        assert status == 204
        assert not path.exists()
    assert archives(node) == []
