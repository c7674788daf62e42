"""The backups' folder of the panel's file manager (issue 21), driven through the real daemon
in front of the Wings stand-in with the requests the stock file manager sends
(pterodactyl/panel app/Repositories/Wings/DaemonFileRepository.php; Pelican's
app/Repositories/Daemon/DaemonFileRepository.php sends the same routes and bodies).

Each store is one entry of ``STORES``: a function that backs a server up into it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.support.daemon_helpers import auth, new_uuid, wait_until
from tests.support.rest_standin import rest_repository
from tests.support.restic_helpers import restic_backups
from tests.support.s3_helpers import s3_config
from tests.support.wings_standin import panel_file_token

LIVE = {
    "server.properties": "motd=backed up\n",
    "world/level.dat": b"level as backed up",
    "world/region/r.0.0.mca": b"\x00region" * 1000,
    "data.tar.gz": b"not really gzip",
}
NO_SPACE_TEXT = "There is not enough disk space available to perform that action."
FOLDER = re.compile(r"^\d{4}-\d\d-\d\d_\d{4}_(?P<uuid>[0-9a-f-]{36})$")
GO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$")


class Store:
    """A store the daemon backs up into (``config``: its ``system.backups`` keys)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    async def __call__(self, front: Any, panel: Any, node: Any, server: str) -> str:
        backup = new_uuid()
        assert (await front.post_backup(server, backup))[0] == 202
        assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
        return backup


def local_store(request: Any) -> Store:
    return Store({})


def node_bucket_store(request: Any) -> Store:
    endpoint, bucket = (request.getfixturevalue(n) for n in ("moto_endpoint", "bucket"))
    return Store({"store": "s3", "s3": asdict(s3_config(endpoint, bucket))})


def restic_store(request: Any) -> Store:
    if shutil.which("restic") is None:
        pytest.skip("restic is not installed")
    return Store(restic_backups(request.getfixturevalue("tmp_path")))


STORES: dict[str, Callable[[Any], Store]] = {
    "local": local_store,
    "node-bucket": node_bucket_store,
    "restic": restic_store,
}


@pytest.fixture(params=sorted(STORES))
def make_backup(request: Any) -> Store:
    return STORES[request.param](request)


async def backed_up(front, panel, node, wings, make_backup) -> tuple[str, str, str]:
    """A server with a symlink or two, backed up; then its live files change. Returns the
    server, the backup and the backup's folder name."""
    server = node.server(dict(LIVE))
    wings.server(server)
    root = node.data / server
    os.symlink("world/level.dat", root / "level-link")
    os.symlink("/etc", root / "etc-link")
    backup = await make_backup(front, panel, node, server)
    (root / "world/level.dat").write_bytes(b"griefed")
    (root / "world/added-later.txt").write_text("new\n")
    listing = await ls(front, server, "/.backups")
    names = [item["name"] for item in listing]
    assert len(names) == 1 and FOLDER.match(names[0]), names
    assert FOLDER.match(names[0])["uuid"] == backup  # type: ignore[index]
    return server, backup, names[0]


async def call(front, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with front.request(method, path, headers=auth(), **kw) as r:
        text = await r.read()
        try:
            return r.status, (await r.json(content_type=None)) if text else None
        except ValueError:
            return r.status, text


async def ls(front, server: str, directory: str) -> list[dict[str, Any]]:
    status, body = await call(
        front, "GET", f"/api/servers/{server}/files/list-directory?directory={quote(directory)}"
    )
    assert status == 200, body
    return body


async def contents(front, server: str, file: str) -> tuple[int, bytes]:
    async with front.request(
        "GET", f"/api/servers/{server}/files/contents?file={quote(file)}", headers=auth()
    ) as r:
        return r.status, await r.read()


def reached_wings(wings, server: str, route: str) -> list[Any]:
    return wings.received(r_method(route), f"/api/servers/{server}/files/{route}")


def r_method(route: str) -> str:
    return {"rename": "PUT", "list-directory": "GET", "contents": "GET"}.get(route, "POST")


# -- what the file manager shows -----------------------------------------------------------------


async def test_the_folder_lists_backups_and_their_files_in_wings_shape(
    start_front, panel, node, wings, make_backup
):
    front = await start_front(**make_backup.config)
    server, _backup, folder = await backed_up(front, panel, node, wings, make_backup)

    root = {item["name"]: item for item in await ls(front, server, "/")}
    assert "server.properties" in root  # Wings' own listing, passed through
    virtual = root[".backups"]
    assert virtual["directory"] is True and virtual["file"] is False
    assert virtual["mime"] == "inode/directory" and virtual["mode"] == "dr-xr-xr-x"

    inside = {item["name"]: item for item in await ls(front, server, f"/.backups/{folder}")}
    assert {"server.properties", "world", "level-link", "etc-link", "data.tar.gz"} <= set(inside)
    props = inside["server.properties"]
    assert set(props) == {
        "name",
        "created",
        "modified",
        "mode",
        "mode_bits",
        "size",
        "directory",
        "file",
        "symlink",
        "mime",
    }
    live = (node.data / server / "server.properties").stat()
    assert props["size"] == len(LIVE["server.properties"])
    assert props["mode_bits"] == format(live.st_mode & 0o777, "o")
    assert props["mode"] == "-" + "".join(
        c if live.st_mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx")
    )
    assert GO_TIME.match(props["modified"]) and GO_TIME.match(props["created"])
    assert props["file"] is True and props["directory"] is False and props["symlink"] is False
    assert inside["world"]["directory"] is True and inside["world"]["mime"] == "inode/directory"
    link = inside["level-link"]
    assert link["symlink"] is True and link["mode"].startswith("L")

    world = {item["name"] for item in await ls(front, server, f"/.backups/{folder}/world")}
    assert world == {"level.dat", "region"}  # added-later.txt came after the backup
    assert not reached_wings(wings, server, "list-directory")[1:]  # only the root went there


async def test_contents_and_download_link_give_the_backed_up_bytes(
    start_front, panel, node, wings, make_backup
):
    front = await start_front(**make_backup.config)
    server, _backup, folder = await backed_up(front, panel, node, wings, make_backup)
    assert await contents(front, server, f"/.backups/{folder}/world/level.dat") == (
        200,
        b"level as backed up",
    )
    # A symlink in the backup is never followed, to a file or through a folder.
    assert (await contents(front, server, f"/.backups/{folder}/level-link"))[0] == 400
    assert (await contents(front, server, f"/.backups/{folder}/etc-link/passwd"))[0] == 404
    assert (await contents(front, server, f"/.backups/{folder}/world"))[0] == 400

    token = panel_file_token(
        server, "file-download", file_path=f"/.backups/{folder}/world/region/r.0.0.mca"
    )
    async with front.request("GET", f"/download/file?token={token}") as r:
        assert r.status == 200
        assert r.headers["Content-Disposition"] == 'attachment; filename="r.0.0.mca"'
        assert await r.read() == LIVE["world/region/r.0.0.mca"]
    async with front.request("GET", f"/download/file?token={token}") as r:
        assert r.status == 404  # one use, as Wings' token store allows
    assert wings.received("GET", "/download/file") == []
    # A link to a real file still goes to Wings.
    real = panel_file_token(server, "file-download", file_path="/world/level.dat")
    async with front.request("GET", f"/download/file?token={real}") as r:
        assert r.status == 200 and await r.read() == b"griefed"


# -- restoring one path --------------------------------------------------------------------------


async def test_move_out_of_a_backup_restores_a_file_and_a_folder(
    start_front, panel, node, wings, make_backup
):
    front = await start_front(**make_backup.config)
    server, _backup, folder = await backed_up(front, panel, node, wings, make_backup)
    root = node.data / server
    rename = f"/api/servers/{server}/files/rename"
    # The file manager's Move: root is the folder shown, ``to`` relative to it.
    body = {
        "root": f"/.backups/{folder}/world",
        "files": [{"from": "level.dat", "to": "../../../world/level.dat"}],
    }
    assert (await call(front, "PUT", rename, json=body))[0] == 204
    assert (root / "world/level.dat").read_bytes() == b"level as backed up"

    (root / "world/level.dat").write_bytes(b"griefed again")
    body = {"root": f"/.backups/{folder}", "files": [{"from": "world", "to": "../../world"}]}
    assert (await call(front, "PUT", rename, json=body))[0] == 204
    assert (root / "world/level.dat").read_bytes() == b"level as backed up"
    assert not (root / "world/added-later.txt").exists()  # the folder is the backup's
    assert (root / "world/region/r.0.0.mca").read_bytes() == LIVE["world/region/r.0.0.mca"]

    # A symlink is restored as a link; nothing is left under a temporary name.
    body = {"root": "/", "files": [{"from": f".backups/{folder}/etc-link", "to": "restored-link"}]}
    assert (await call(front, "PUT", rename, json=body))[0] == 204
    assert os.readlink(root / "restored-link") == "/etc"
    assert [p for p in os.listdir(root) if p.startswith(".wingsbak")] == []
    assert reached_wings(wings, server, "rename") == []
    # The backup itself is unchanged.
    world = {i["name"] for i in await ls(front, server, f"/.backups/{folder}/world")}
    assert world == {"level.dat", "region"}


async def test_copy_in_a_backup_restores_beside_the_live_file_named_as_wings_names_copies(
    start_front, panel, node, wings, make_backup
):
    front = await start_front(**make_backup.config)
    server, _backup, folder = await backed_up(front, panel, node, wings, make_backup)
    root = node.data / server
    copy = f"/api/servers/{server}/files/copy"
    level = {"location": f"/.backups/{folder}/world/level.dat"}
    assert (await call(front, "POST", copy, json=level))[0] == 204
    assert (root / "world/level copy.dat").read_bytes() == b"level as backed up"
    assert (await call(front, "POST", copy, json=level))[0] == 204
    assert (root / "world/level copy 1.dat").read_bytes() == b"level as backed up"
    assert (root / "world/level.dat").read_bytes() == b"griefed"  # never overwritten
    archive = {"location": f"/.backups/{folder}/data.tar.gz"}
    assert (await call(front, "POST", copy, json=archive))[0] == 204
    assert (root / "data copy.tar.gz").read_bytes() == LIVE["data.tar.gz"]
    # Wings copies files only.
    status, _ = await call(front, "POST", copy, json={"location": f"/.backups/{folder}/world"})
    assert status == 404
    assert reached_wings(wings, server, "copy") == []
    # A real file's copy is still Wings'.
    assert (await call(front, "POST", copy, json={"location": "/server.properties"}))[0] == 204
    assert len(reached_wings(wings, server, "copy")) == 1
    assert (root / "server.properties copy").exists() is False
    assert (root / "server copy.properties").read_text() == LIVE["server.properties"]


# -- refused writes and escapes ------------------------------------------------------------------


async def test_writes_inside_the_folder_are_refused_and_never_reach_wings(
    start_front, panel, node, wings, make_backup
):
    front = await start_front(**make_backup.config)
    server, _backup, folder = await backed_up(front, panel, node, wings, make_backup)
    inside = f"/.backups/{folder}"
    files = f"/api/servers/{server}/files"
    refused: list[tuple[str, str, dict[str, Any] | None, bytes | None]] = [
        ("POST", f"{files}/write?file={quote(inside + '/x.txt')}", None, b"data"),
        ("POST", f"{files}/delete", {"root": inside, "files": ["world"]}, None),
        ("POST", f"{files}/delete", {"root": "/", "files": [".backups"]}, None),
        ("POST", f"{files}/create-directory", {"name": "new", "path": inside}, None),
        (
            "POST",
            f"{files}/chmod",
            {"root": inside, "files": [{"file": "world", "mode": "777"}]},
            None,
        ),
        ("POST", f"{files}/compress", {"root": inside, "files": ["world"]}, None),
        ("POST", f"{files}/decompress", {"root": inside, "file": "data.tar.gz"}, None),
        ("POST", f"{files}/decompress", {"root": "/", "file": f"{inside}/data.tar.gz"}, None),
        (
            "PUT",
            f"{files}/rename",
            {"root": "/", "files": [{"from": "server.properties", "to": f"{inside}/s"}]},
            None,
        ),
        (
            "PUT",
            f"{files}/rename",
            {"root": "/world", "files": [{"from": "level.dat", "to": "../.backups/x"}]},
            None,
        ),
    ]
    for method, path, body, raw in refused:
        async with front.request(method, path, json=body, data=raw, headers=auth()) as r:
            assert r.status == 403, (path, body, await r.text())
            answer = await r.json()
            assert set(answer) == {"error", "request_id"} and "read-only" in answer["error"]
    upload = panel_file_token(server, "file-upload")
    async with front.request(
        "POST", f"/upload/file?token={upload}&directory={quote(inside)}", data=b"x"
    ) as r:
        assert r.status == 403
    for route in (
        "write",
        "delete",
        "create-directory",
        "chmod",
        "compress",
        "decompress",
        "rename",
    ):
        assert reached_wings(wings, server, route) == [], route
    assert wings.received("POST", "/upload/file") == []
    assert sorted(os.listdir(node.data / server / "world")) == [
        "added-later.txt",
        "level.dat",
        "region",
    ]


async def test_paths_cannot_leave_the_backup_or_the_server(
    start_front, panel, node, wings, make_backup, tmp_path
):
    front = await start_front(**make_backup.config)
    server, _backup, folder = await backed_up(front, panel, node, wings, make_backup)
    root = node.data / server
    # Spelled with doubled slashes and encoded dots, still the same backup file.
    odd = f"//.backups//{folder}/./world/%2e%2e/world//level.dat"
    async with front.request(
        "GET", f"/api/servers/{server}/files/contents?file={odd}", headers=auth()
    ) as r:
        assert (r.status, await r.read()) == (200, b"level as backed up")
    # ``..`` past the backup's root is a real path again, Wings' to answer.
    escape = quote(f"/.backups/{folder}/../../world/level.dat")
    async with front.request(
        "GET", f"/api/servers/{server}/files/contents?file={escape}", headers=auth()
    ) as r:
        assert (r.status, await r.read()) == (200, b"griefed")
    assert len(wings.received("GET", f"/api/servers/{server}/files/contents")) == 1
    # A Move whose ``to`` climbs past the server's root lands inside it (cleaned at the root).
    rename = f"/api/servers/{server}/files/rename"
    body = {
        "root": f"/.backups/{folder}",
        "files": [{"from": "server.properties", "to": "../../../../../../tmp/p"}],
    }
    assert (await call(front, "PUT", rename, json=body))[0] == 204
    assert (root / "tmp/p").read_text() == LIVE["server.properties"]
    # A live symlink on the way is never written through.
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "out")
    body = {
        "root": f"/.backups/{folder}",
        "files": [{"from": "server.properties", "to": "../../out/p"}],
    }
    status, _ = await call(front, "PUT", rename, json=body)
    assert status == 404
    copy_out = {"location": f"/.backups/{folder}/etc-link/passwd"}
    assert (await call(front, "POST", f"/api/servers/{server}/files/copy", json=copy_out))[0] == 404
    assert list(outside.iterdir()) == []
    # Without the node token, nothing is shown.
    async with front.request(
        "GET", f"/api/servers/{server}/files/list-directory?directory=/.backups"
    ) as r:
        assert r.status == 401


async def test_a_real_backups_folder_wins(start_front, panel, node, wings, make_backup, capsys):
    front = await start_front(**make_backup.config)
    server = node.server({**LIVE, ".backups/players.dat": "mine"})
    wings.server(server)
    await make_backup(front, panel, node, server)
    listing = await ls(front, server, "/")
    assert [i["name"] for i in listing].count(".backups") == 1
    assert next(i for i in listing if i["name"] == ".backups")["mode"].startswith("drwx")
    assert [i["name"] for i in await ls(front, server, "/.backups")] == ["players.dat"]
    status, _ = await call(
        front,
        "POST",
        f"/api/servers/{server}/files/delete",
        json={"root": "/.backups", "files": ["players.dat"]},
    )
    assert status == 204 and not (node.data / server / ".backups/players.dat").exists()
    assert len(reached_wings(wings, server, "delete")) == 1
    assert "browse_folder_hidden_by_real_entry" in capsys.readouterr().out  # the warning


async def test_the_feature_can_be_off_or_renamed(start_front, panel, node, wings, make_backup):
    front = await start_front(browse_folder="", **make_backup.config)
    server = node.server(dict(LIVE))
    wings.server(server)
    await make_backup(front, panel, node, server)
    assert ".backups" not in [i["name"] for i in await ls(front, server, "/")]
    status, _ = await call(
        front, "GET", f"/api/servers/{server}/files/list-directory?directory=/.backups"
    )
    assert status == 404  # Wings' answer: there is no such folder
    assert len(reached_wings(wings, server, "list-directory")) == 2


async def test_the_folder_can_be_renamed(start_front, panel, node, wings, make_backup):
    front = await start_front(browse_folder="Backups", **make_backup.config)
    server = node.server(dict(LIVE))
    wings.server(server)
    backup = await make_backup(front, panel, node, server)
    assert "Backups" in [i["name"] for i in await ls(front, server, "/")]
    assert ".backups" not in [i["name"] for i in await ls(front, server, "/")]
    (folder,) = await ls(front, server, "/Backups")
    assert folder["name"].endswith(backup) and folder["directory"] is True


# -- review findings -----------------------------------------------------------------------------


async def test_restores_keep_within_the_servers_disk_limit(start_front, panel, node, wings):
    """A restore writes as Wings' own writes do: within the server's disk limit
    (filesystem.go Copy -> HasSpaceFor), or 400 with Wings' message; replacing a path
    counts what it frees. Unchecked, Move/Copy out of a backup fill the node's disk."""
    front = await start_front()
    big = os.urandom(400 * 1024)
    server = node.server({"big.bin": big})
    wings.server(server, disk_space=1)  # MiB
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    (folder,) = [item["name"] for item in await ls(front, server, "/.backups")]
    root = node.data / server
    rename = f"/api/servers/{server}/files/rename"

    def move(to: str) -> dict[str, Any]:
        return {"root": "/", "files": [{"from": f".backups/{folder}/big.bin", "to": to}]}

    assert (await call(front, "PUT", rename, json=move("big2.bin")))[0] == 204
    status, body = await call(front, "PUT", rename, json=move("big3.bin"))
    assert status == 400, body
    assert body["error"] == "There is not enough disk space available to perform that action."
    assert not (root / "big3.bin").exists()
    copy = {"location": f"/.backups/{folder}/big.bin"}
    status, body = await call(front, "POST", f"/api/servers/{server}/files/copy", json=copy)
    assert status == 400, body
    assert not (root / "big copy.bin").exists()
    # Replacing a file of the same size needs no more room.
    (root / "big.bin").write_bytes(b"x" * len(big))
    assert (await call(front, "PUT", rename, json=move("big.bin")))[0] == 204
    assert (root / "big.bin").read_bytes() == big
    assert [p for p in os.listdir(root) if p.startswith(".wingsbak")] == []




async def test_one_move_of_several_paths_counts_each_against_the_disk_limit(
    start_front, panel, node, wings
):
    """The file manager moves several selected paths in one request: each is held to the
    room the ones before it left (the root measured once, then counted on)."""
    front = await start_front()
    big = os.urandom(400 * 1024)
    server = node.server({"big.bin": big})
    wings.server(server, disk_space=1)  # MiB: the live file and one restored copy fit
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    (folder,) = [item["name"] for item in await ls(front, server, "/.backups")]
    pairs = [{"from": f".backups/{folder}/big.bin", "to": name} for name in ("a.bin", "b.bin")]
    status, body = await call(
        front, "PUT", f"/api/servers/{server}/files/rename", json={"root": "/", "files": pairs}
    )
    assert status == 400 and body["error"] == NO_SPACE_TEXT, body
    root = node.data / server
    assert (root / "a.bin").read_bytes() == big and not (root / "b.bin").exists()

async def test_two_moves_at_once_keep_within_the_disk_limit_together(
    start_front, panel, node, wings, monkeypatch
):
    """Each Move measures the room left and then writes. Two measuring before either has
    written would each find room for one and together pass the limit; one at a time, the
    second measures what the first wrote. The first write is held until the second Move
    has started writing too (or, as it must be, for 2 s while the second waits)."""
    from wingsbak.wings import browse

    front = await start_front()
    big = os.urandom(400 * 1024)
    server = node.server({"big.bin": big})
    wings.server(server, disk_space=1)  # MiB: the live file and one restored copy fit
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    (folder,) = [item["name"] for item in await ls(front, server, "/.backups")]
    real = browse.restore_path
    second = threading.Event()
    started: list[str] = []
    guard = threading.Lock()

    def held(*args: Any, **kw: Any) -> Any:
        with guard:
            started.append("/".join(args[3]))
            first = len(started) == 1
        if first:
            second.wait(2)
        else:
            second.set()
        return real(*args, **kw)

    monkeypatch.setattr(browse, "restore_path", held)
    rename = f"/api/servers/{server}/files/rename"

    def move(to: str) -> dict[str, Any]:
        return {"root": "/", "files": [{"from": f".backups/{folder}/big.bin", "to": to}]}

    answers = await asyncio.gather(
        *(call(front, "PUT", rename, json=move(name)) for name in ("a.bin", "b.bin"))
    )
    assert sorted(status for status, _ in answers) == [204, 400], answers
    root = node.data / server
    assert len([n for n in ("a.bin", "b.bin") if (root / n).exists()]) == 1
    assert [p for p in os.listdir(root) if p.startswith(".wingsbak")] == []

def _held_on_fifo() -> int:
    """Threads of this process (the daemon runs in it) waiting in open(2) for a FIFO's
    writer (the kernel's ``wait_for_partner``)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/wchan") as f:
                count += f.read() == "wait_for_partner"
        except OSError:
            pass
    return count


async def test_browsing_held_by_a_hung_store_leaves_the_daemon_threads(
    start_front, panel, node, wings
):
    """Opening a backup waits on its store (an index built, restic, a bucket, a mount): many
    clicks on a store that hangs (here an index that never answers: a FIFO) must not take
    every thread of the daemon's shared pool, or deleting a backup, which needs one, hangs
    for every server of the node."""
    front = await start_front()
    server = node.server({"a.txt": "a\n"})
    other = node.server({"b.txt": "b\n"})
    wings.server(server)
    wings.server(other)
    backup, doomed = new_uuid(), new_uuid()
    for s, b in ((server, backup), (other, doomed)):
        assert (await front.post_backup(s, b))[0] == 202
        assert (await panel.wait_report(b, timeout=60)).json["successful"] is True
    (folder,) = [item["name"] for item in await ls(front, server, "/.backups")]
    (archive,) = [p for p in node.backups.rglob(f"*{backup}*") if p.name.endswith(".tar.gz")]
    fifo = f"{archive}.index"
    os.unlink(fifo)
    os.mkfifo(fifo)

    path = f"/api/servers/{server}/files/list-directory?directory={quote('/.backups/' + folder)}"
    clicks = [asyncio.ensure_future(call(front, "GET", path)) for _ in range(40)]
    try:
        await wait_until(lambda: _held_on_fifo() >= 2, "browse requests held")
        delete = call(front, "DELETE", f"/api/servers/{other}/backup/{doomed}")
        status, body = await asyncio.wait_for(delete, 30)
        assert status == 204, body
    finally:
        async def release() -> bool:
            if all(c.done() for c in clicks):
                return True
            try:  # a writer that opens and closes gives every reader its end of file
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            return False

        await wait_until(release, "held browse requests released", timeout=120, interval=0.1)
    assert {(await c)[0] for c in clicks} == {200}


async def test_restores_into_an_egg_denylisted_path_are_refused(start_front, panel, node, wings):
    """Wings refuses a rename or copy naming a path of the egg's file_denylist (403): a
    file uploaded under an allowed name, backed up, must not be Moved from the backup onto
    a denylisted one."""
    front = await start_front()
    server = node.server({"server.jar": b"the egg's jar", "upload.bin": b"anything"})
    wings.server(server, file_denylist=["server.jar", "/config/"])
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    (folder,) = [item["name"] for item in await ls(front, server, "/.backups")]
    root = node.data / server
    rename = f"/api/servers/{server}/files/rename"
    for to in ("server.jar", "plugins/../server.jar", "config/secret.cfg"):
        body = {"root": "/", "files": [{"from": f".backups/{folder}/upload.bin", "to": to}]}
        status, answer = await call(front, "PUT", rename, json=body)
        assert status == 403, (to, answer)
        assert answer["error"] == "This file cannot be modified: present in egg denylist."
    assert (root / "server.jar").read_bytes() == b"the egg's jar"
    assert not (root / "config").exists()
    copy = {"location": f"/.backups/{folder}/server.jar"}
    status, _ = await call(front, "POST", f"/api/servers/{server}/files/copy", json=copy)
    assert status == 403
    assert not (root / "server copy.jar").exists()
    body = {"root": "/", "files": [{"from": f".backups/{folder}/upload.bin", "to": "ok.bin"}]}
    assert (await call(front, "PUT", rename, json=body))[0] == 204
    assert (root / "ok.bin").read_bytes() == b"anything"


async def test_writes_into_the_folder_spelled_as_go_reads_them_are_refused(
    start_front, panel, node, wings
):
    """Wings reads a body as Go does (keys matched under case folding, the last winning,
    null leaving a field as it was, only the first JSON value read) and pulls into
    ``root``/``file_name``: every such spelling of a write into the folder is refused here,
    or Wings makes a real ``.backups`` and the server's backups vanish from its manager."""
    front = await start_front()
    server = node.server({"a.txt": "a\n"})
    wings.server(server)
    files = f"/api/servers/{server}/files"
    url = "https://example.com/x"
    refused: list[tuple[str, str, bytes]] = [
        ("POST", "create-directory", b'{"NAME": ".backups", "path": "/"}'),
        ("POST", "create-directory", b'{"name": ".backups", "name": null, "path": "/"}'),
        ("POST", "create-directory", b'{"name": ".backups", "path": "/"} trailing'),
        ("POST", "create-directory", b'{"name": ".backups", "path": "/", "x": "\xff"}'),
        ("PUT", "rename", b'{"root": "/", "Files": [{"from": "a.txt", "TO": ".backups/a"}]}'),
        ("POST", "pull", b'{"directory": "/", "root": ".backups", "url": "%s"}' % url.encode()),
        ("POST", "pull", b'{"root": "/", "file_name": ".backups/x", "url": "%s"}' % url.encode()),
    ]
    for method, route, raw in refused:
        headers = {**auth(), "Content-Type": "application/json"}
        async with front.request(method, f"{files}/{route}", data=raw, headers=headers) as r:
            assert r.status == 403, (route, raw, await r.text())
    for route in ("create-directory", "rename", "pull"):
        assert reached_wings(wings, server, route) == [], route
    assert not (node.data / server / ".backups").exists()



async def test_wings_is_sent_the_body_as_it_was_judged(start_front, panel, node, wings):
    """A body judged here (does it touch the folder?) reaches Wings as it was read: the
    fields as Go assigned them (a key in other case, the last of a duplicate), written again
    without what Go never reads (text after the first value), never the bytes as they came,
    which a reading other than the one judged could take otherwise."""
    front = await start_front()
    server = node.server({"a.txt": "a", "b.txt": "b"})
    wings.server(server)
    files = f"/api/servers/{server}/files"
    rename = (b'{"root":"/.backups","Root":"/","files":[{"FROM":"a.txt","to":"c.txt"}]}'
              b' and text Go never reads')
    delete = b'{"root":"/","files":["b.txt"],"FILES":["b.txt"]}'
    for method, route, raw in (("PUT", "rename", rename), ("POST", "delete", delete)):
        async with front.request(method, f"{files}/{route}", data=raw,
                                 headers={**auth(), "Content-Type": "application/json"}) as r:
            assert r.status == 204, await r.text()
    (sent,) = reached_wings(wings, server, "rename")
    assert json.loads(sent.raw) == {"root": "/", "files": [{"from": "a.txt", "to": "c.txt"}]}
    (sent,) = reached_wings(wings, server, "delete")
    assert json.loads(sent.raw) == {"root": "/", "files": ["b.txt"]}
    assert sorted(os.listdir(node.data / server)) == ["c.txt"]

async def test_a_move_to_a_bad_name_gets_a_specific_answer(start_front, panel, node, wings):
    """A name with a NUL byte or longer than a file name can be: 400 (Wings' "file name is
    too long" for the latter), not a 500, and nothing left behind."""
    front = await start_front()
    server = node.server({"a.txt": "a\n"})
    wings.server(server)
    backup = new_uuid()
    assert (await front.post_backup(server, backup))[0] == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    (folder,) = [item["name"] for item in await ls(front, server, "/.backups")]
    rename = f"/api/servers/{server}/files/rename"
    for to, error in (
        ("x\x00y", "the name holds a NUL byte"),
        ("n" * 300, "file name is too long"),
        ("d/" + "n" * 300, "file name is too long"),
    ):
        body = {"root": "/", "files": [{"from": f".backups/{folder}/a.txt", "to": to}]}
        status, answer = await call(front, "PUT", rename, json=body)
        assert status == 400 and error in answer["error"], (to[:8], answer)
    left = os.listdir(node.data / server)
    assert "a.txt" in left and [p for p in left if p.startswith(".wingsbak")] == []


async def test_a_store_that_does_not_answer_leaves_the_root_listing_answering(
    start_front, panel, node, wings, tmp_path
):
    """The root listing asks the stores for the folder's time only: a restic repository
    whose server holds its answers (the REST stand-in, tests/support/rest_standin.py) must
    not hold the file manager's root listing; the folder is still shown."""
    if shutil.which("restic") is None:
        pytest.skip("restic is not installed")
    async with rest_repository(tmp_path) as (rest, backups):
        front = await start_front(**backups)
        server = node.server(dict(LIVE))
        wings.server(server)
        rest.delay = lambda method, path: 120.0 if path.startswith("/snapshots") else 0.0
        try:
            async with front.request(
                "GET",
                f"/api/servers/{server}/files/list-directory?directory=%2F",
                headers=auth(),
                timeout=aiohttp.ClientTimeout(total=60),
            ) as r:
                assert r.status == 200
                names = {item["name"] for item in await r.json()}
            assert {".backups", "server.properties"} <= names
        finally:
            rest.delay = lambda method, path: 0.0
