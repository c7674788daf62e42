"""A server's deletion (``DELETE /api/servers/{s}``, Wings' route) and its stored backups: the
node's bucket (moto) and restic repository (the real restic) lose them exactly when Wings
removes its local ones (pelican-dev/wings ``router/router_server.go`` deleteServer,
``remove_backups_on_server_delete``, default true; pterodactyl/wings never), after Wings'
success only, never after an outgoing transfer, and a kill -9 between Wings' answer and the
cleanup does not forget it."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import (
    backed_up,
    call,
    in_front,
    log_events,
    logged,
    restic_backups,
    restic_snapshots,
    s3_backups,
    transfer_token,
)

from tests.support.daemon_helpers import (
    PELICAN,
    PTERODACTYL,
    DaemonProcess,
    Node,
    Panel,
    wait_until,
)
from tests.support.wings_standin import WingsStandin

FILES = {"server.properties": "motd=deleted\n", "world/level.dat": "y" * 4000}


def objects(s3_admin: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket).get("Contents", []))


class Servers:
    """Two servers with backups in the node's store: ``gone`` is deleted, ``kept`` stays."""

    def __init__(self, node: Node, wings: WingsStandin) -> None:
        self.gone, self.kept = node.server(FILES), node.server(FILES)
        wings.server(self.gone)
        wings.server(self.kept)
        self.backups: dict[str, list[str]] = {self.gone: [], self.kept: []}

    async def back_up(self, proc: DaemonProcess, panel: Panel) -> None:
        for server in (self.gone, self.gone, self.kept):
            self.backups[server].append(await backed_up(proc, panel, server))

    def keys(self, server: str) -> list[str]:
        """The server's objects: each archive and its checksum beside it (``<key>.sha1``)."""
        archives = [f"{server}/{b}.tar.gz" for b in self.backups[server]]
        return sorted([*archives, *(f"{key}.sha1" for key in archives)])


CASES = [
    pytest.param(PELICAN, True, True, id="pelican-removes"),
    pytest.param(PELICAN, None, True, id="pelican-default-removes"),
    pytest.param(PELICAN, False, False, id="pelican-keeps"),
    pytest.param(PTERODACTYL, True, False, id="pterodactyl-keeps"),
]


@pytest.mark.parametrize(("flavour", "remove", "removed"), CASES)
async def test_a_deleted_servers_bucket_backups_go_when_wings_removes_its_own(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    moto_endpoint: str,
    bucket: str,
    s3_admin: Any,
    flavour: str,
    remove: bool | None,
    removed: bool,
) -> None:
    backups = s3_backups(moto_endpoint, bucket)
    proc = in_front(
        daemon_process, node, wings, panel, flavour,
        remove_backups_on_server_delete=remove, **backups,
    )
    await proc.start()
    servers = Servers(node, wings)
    await servers.back_up(proc, panel)
    # Not a backup of the server (not <uuid>.tar.gz): never the node's to delete.
    s3_admin.put_object(Bucket=bucket, Key=f"{servers.gone}/notes.txt", Body=b"mine")
    (node.backups / servers.gone).mkdir(exist_ok=True)  # Wings' own folder of the server
    everything = sorted([*servers.keys(servers.gone), *servers.keys(servers.kept)])
    assert objects(s3_admin, bucket) == sorted([*everything, f"{servers.gone}/notes.txt"])

    assert (await call(proc, "DELETE", f"/api/servers/{servers.gone}"))[0] == 204
    assert servers.gone not in wings.servers
    if removed:
        await logged(proc, "server_backups_removed", server=servers.gone, s3_objects=2)
        left = sorted([*servers.keys(servers.kept), f"{servers.gone}/notes.txt"])
        assert objects(s3_admin, bucket) == left
        assert not (node.backups / servers.gone).exists()  # Wings removed its folder
    else:
        await logged(proc, "server_deleted", server=servers.gone, stored_backups="kept")
        assert objects(s3_admin, bucket) == sorted([*everything, f"{servers.gone}/notes.txt"])
    assert not (node.backups / ".wingsbak-servers.json").exists()


async def test_a_delete_wings_refuses_removes_nothing(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    moto_endpoint: str,
    bucket: str,
    s3_admin: Any,
) -> None:
    backups = s3_backups(moto_endpoint, bucket)
    proc = in_front(daemon_process, node, wings, panel, PELICAN, **backups)
    await proc.start()
    servers = Servers(node, wings)
    await servers.back_up(proc, panel)
    before = objects(s3_admin, bucket)
    # Wings does not know the server (404), and refuses a wrong token (403): nothing deleted.
    del wings.servers[servers.gone]
    assert (await call(proc, "DELETE", f"/api/servers/{servers.gone}"))[0] == 404
    wings.server(servers.gone)
    assert (await call(proc, "DELETE", f"/api/servers/{servers.gone}", token="nope"))[0] == 403
    # A later deletion that works still removes them: nothing was left half-noted.
    assert (await call(proc, "DELETE", f"/api/servers/{servers.kept}"))[0] == 204
    await logged(proc, "server_backups_removed", server=servers.kept)
    assert objects(s3_admin, bucket) == servers.keys(servers.gone)
    assert before == sorted([*servers.keys(servers.gone), *servers.keys(servers.kept)])
    assert not log_events(proc, "server_backups_removed", server=servers.gone)


@pytest.mark.parametrize(
    ("remove", "removed"), [(True, True), (False, False)], ids=["removes", "keeps"]
)
async def test_a_deleted_servers_restic_snapshots_are_forgotten_when_wings_removes_its_own(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    tmp_path: Path,
    remove: bool,
    removed: bool,
) -> None:
    backups = restic_backups(tmp_path)
    proc = in_front(
        daemon_process, node, wings, panel, PELICAN,
        remove_backups_on_server_delete=remove, **backups,
    )
    await proc.start()
    servers = Servers(node, wings)
    await servers.back_up(proc, panel)
    assert len(restic_snapshots(backups, f"server:{servers.gone}")) == 2

    assert (await call(proc, "DELETE", f"/api/servers/{servers.gone}"))[0] == 204
    if removed:
        await logged(proc, "server_backups_removed", server=servers.gone, restic_snapshots=2)
        await wait_until(
            lambda: not restic_snapshots(backups, f"server:{servers.gone}"),
            "restic to forget the server's snapshots",
            60,
        )
    else:
        await logged(proc, "server_deleted", server=servers.gone, stored_backups="kept")
        assert len(restic_snapshots(backups, f"server:{servers.gone}")) == 2
    assert len(restic_snapshots(backups, f"server:{servers.kept}")) == 1


@pytest.mark.parametrize("store", ["s3", "restic"])
async def test_a_delete_after_an_outgoing_transfer_keeps_the_stored_backups(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    moto_endpoint: str,
    bucket: str,
    s3_admin: Any,
    tmp_path: Path,
    store: str,
) -> None:
    """The panel moved the server (its transfer accepted by Wings, then the new node's
    success): its DELETE on the old node removes nothing from the bucket or the repository,
    also when wingsbak restarted in between."""
    backups = s3_backups(moto_endpoint, bucket) if store == "s3" else restic_backups(tmp_path)
    proc = in_front(daemon_process, node, wings, panel, PELICAN, **backups)
    await proc.start()
    servers = Servers(node, wings)
    await servers.back_up(proc, panel)
    elsewhere = WingsStandin(tmp_path / "elsewhere")  # the new node's Wings
    elsewhere.flavour = PELICAN
    elsewhere.lifecycle.backup_dir = tmp_path / "elsewhere-backups"
    await elsewhere.start()
    try:
        body = {
            "url": f"{elsewhere.url}/api/transfers",
            "token": f"Bearer {transfer_token(servers.gone)}",
            "backups": servers.backups[servers.gone],
            "server": {"uuid": servers.gone, "start_on_completion": False},
        }
        path = f"/api/servers/{servers.gone}/transfer"
        assert (await call(proc, "POST", path, body))[0] == 202
        await wait_until(lambda: servers.gone in wings.lifecycle.pushes, "the transfer")
        assert wings.lifecycle.pushes[servers.gone] == "success"
    finally:
        await elsewhere.stop()
    await proc.stop()
    await proc.start()
    assert (await call(proc, "DELETE", f"/api/servers/{servers.gone}"))[0] == 204
    await logged(proc, "server_deleted", server=servers.gone, stored_backups="kept")
    if store == "s3":
        assert objects(s3_admin, bucket) == sorted(
            [*servers.keys(servers.gone), *servers.keys(servers.kept)]
        )
    else:
        assert len(restic_snapshots(backups, f"server:{servers.gone}")) == 2
    assert not (node.backups / ".wingsbak-servers.json").exists()


async def test_a_failed_transfer_does_not_keep_a_later_deletions_backups(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    moto_endpoint: str,
    bucket: str,
    s3_admin: Any,
) -> None:
    """A transfer that fails leaves the server here; the panel takes its backups here again,
    and its deletion later is an ordinary one."""
    backups = s3_backups(moto_endpoint, bucket)
    proc = in_front(daemon_process, node, wings, panel, PELICAN, **backups)
    await proc.start()
    servers = Servers(node, wings)
    await servers.back_up(proc, panel)
    body = {
        "url": "http://127.0.0.1:9/api/transfers",  # nothing listens: the push fails
        "token": f"Bearer {transfer_token(servers.gone)}",
        "backups": [],
        "server": {"uuid": servers.gone},
    }
    assert (await call(proc, "POST", f"/api/servers/{servers.gone}/transfer", body))[0] == 202
    await wait_until(lambda: servers.gone in wings.lifecycle.pushes, "the transfer to fail")
    assert wings.lifecycle.pushes[servers.gone].startswith("failure")
    servers.backups[servers.gone].append(await backed_up(proc, panel, servers.gone))
    assert (await call(proc, "DELETE", f"/api/servers/{servers.gone}"))[0] == 204
    await logged(proc, "server_backups_removed", server=servers.gone, s3_objects=3)
    assert objects(s3_admin, bucket) == servers.keys(servers.kept)


@pytest.mark.parametrize("step", ["server-delete-answered", "server-delete-confirmed"])
async def test_a_kill_between_wings_answer_and_the_cleanup_does_not_forget_it(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    moto_endpoint: str,
    bucket: str,
    s3_admin: Any,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """kill -9 once Wings has answered the DELETE (before wingsbak noted it as done by Wings,
    and after): the next start removes the server's backups."""
    backups = s3_backups(moto_endpoint, bucket)
    proc = in_front(daemon_process, node, wings, panel, PELICAN, **backups)
    await proc.start()
    servers = Servers(node, wings)
    await servers.back_up(proc, panel)
    await proc.stop()
    monkeypatch.setenv("WINGSBAK_FAILPOINT", f"{step}:kill")
    await proc.start()
    monkeypatch.delenv("WINGSBAK_FAILPOINT")
    try:
        await call(proc, "DELETE", f"/api/servers/{servers.gone}")
    except Exception:  # the answer may be lost with the process
        pass
    assert proc.proc is not None
    await wait_until(lambda: proc.proc is not None and proc.proc.poll() is not None, "the kill")
    assert proc.proc.returncode == -signal.SIGKILL
    assert servers.gone not in wings.servers  # Wings did delete it
    assert objects(s3_admin, bucket) == sorted(
        [*servers.keys(servers.gone), *servers.keys(servers.kept)]
    )
    await proc.start()
    await logged(proc, "server_backups_removed", server=servers.gone, s3_objects=2)
    assert objects(s3_admin, bucket) == servers.keys(servers.kept)
    await wait_until(
        lambda: not (node.backups / ".wingsbak-servers.json").exists(), "the record to go"
    )
