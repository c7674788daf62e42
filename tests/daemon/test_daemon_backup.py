"""POST a backup, the panel's report against sha1sum/stat, the sidecar, the archive's contents,
the per-server queue and the node limit, DELETE."""

from __future__ import annotations

import asyncio
import os
import subprocess

import structlog

from tests.support.daemon_helpers import (
    ACCEPT,
    NODE_TOKEN,
    TOKEN_ID,
    Daemon,
    Node,
    Panel,
    auth,
    download_claims,
    new_uuid,
    sign,
    wait_until,
)


def sha1sum(path: os.PathLike[str]) -> str:
    out = subprocess.run(["sha1sum", str(path)], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def tar_names(path: os.PathLike[str]) -> set[str]:
    out = subprocess.run(["tar", "-tzf", str(path)], check=True, capture_output=True, text=True)
    return {line.rstrip("/") for line in out.stdout.splitlines() if line}


async def test_backup_report_matches_sha1sum_and_stat(daemon: Daemon, node: Node, panel: Panel):
    server = node.server(
        {
            "server.properties": "motd=hello\n",
            "world/level.dat": os.urandom(3000),
            "logs/latest.log": "log line\n",
            "cache/blob.bin": b"x" * 100,
            "plugins/a.jar": b"jar",
            "plugins/keep.tmp": b"keep me",
            "notes.tmp": b"tmp",
            ".pteroignore": "*.tmp\n!plugins/keep.tmp\ncache/\n",
        }
    )
    backup = new_uuid()
    status, body = await daemon.post_backup(server, backup, ignore="logs/\n/server.properties\n")
    assert status == 202, body

    report = await panel.wait_report(backup)
    archive = node.archive(server, backup)
    assert archive.is_file()
    assert report.method == "POST"
    assert report.headers["Authorization"] == f"Bearer {TOKEN_ID}.{NODE_TOKEN}"
    assert report.headers["Accept"] == ACCEPT
    assert report.headers["Content-Type"].startswith("application/json")
    assert report.json["successful"] is True
    assert report.json["checksum_type"] == "sha1"
    assert report.json["checksum"] == sha1sum(archive)
    assert report.json["size"] == archive.stat().st_size
    assert report.json["parts"] is None

    # The sidecar is in the format sha1sum -c reads, relative to its folder.
    sidecar = archive.with_name(archive.name + ".sha1")
    check = subprocess.run(
        ["sha1sum", "-c", sidecar.name], cwd=archive.parent, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # .pteroignore first, then the request's lines; both apply (PROTOCOL.md).
    assert tar_names(archive) == {
        ".pteroignore",
        "world",
        "world/level.dat",
        "plugins",
        "plugins/a.jar",
        "plugins/keep.tmp",
    }

    # Exactly one report, even after a moment.
    await asyncio.sleep(0.3)
    assert len(panel.reports(backup)) == 1
    assert not node.temporaries()


async def test_ignore_as_list_and_nested_negation(daemon: Daemon, node: Node, panel: Panel):
    server = node.server({"a/b/c.txt": "c", "a/b/d.log": "d", "e.log": "e", "keep.log": "k"})
    backup = new_uuid()
    status, _ = await daemon.post_backup(server, backup, ignore="*.log\n!keep.log\n")
    assert status == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    assert tar_names(node.archive(server, backup)) == {"a", "a/b", "a/b/c.txt", "keep.log"}


async def test_same_server_is_queued_not_refused(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url, write_limit=1, max_concurrent=4)
    server = node.random_server(1_500_000, files=3)
    first, second = new_uuid(), new_uuid()
    assert (await d.post_backup(server, first))[0] == 202
    assert (await d.post_backup(server, second))[0] == 202

    jobs = (await d.system())["jobs"]
    states = {j["uuid"]: j["state"] for j in jobs["running"] + jobs["queued"]}
    assert states.get(second) == "queued", jobs
    assert [j["uuid"] for j in jobs["running"]] in ([first], []), jobs
    assert all(j["uuid"] != second for j in jobs["running"])

    # While the first runs, the second never runs at the same time.
    seen_both_running = False

    async def both_reported() -> bool:
        nonlocal seen_both_running
        running = [j["uuid"] for j in (await d.system())["jobs"]["running"]]
        seen_both_running |= {first, second} <= set(running)
        return len(panel.reports()) >= 2

    await wait_until(both_reported, "both backups to finish", timeout=30)
    assert not seen_both_running
    r1, r2 = panel.reports(first)[0], panel.reports(second)[0]
    assert r1.json["successful"] and r2.json["successful"]
    assert panel.requests.index(r1) < panel.requests.index(r2)


async def test_node_wide_max_concurrent(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url, write_limit=1, max_concurrent=1)
    servers = [node.random_server(1_000_000, files=2) for _ in range(2)]
    backups = [new_uuid(), new_uuid()]
    for s, b in zip(servers, backups, strict=True):
        assert (await d.post_backup(s, b))[0] == 202
    max_running = 0
    queued_seen = False

    async def both_reported() -> bool:
        nonlocal max_running, queued_seen
        jobs = (await d.system())["jobs"]
        max_running = max(max_running, len(jobs["running"]))
        queued_seen |= bool(jobs["queued"])
        assert jobs["max_concurrent"] == 1
        return len(panel.reports()) >= 2

    await wait_until(both_reported, "both backups to finish", timeout=30)
    assert max_running == 1
    assert queued_seen
    assert all(panel.reports(b)[0].json["successful"] for b in backups)


async def test_conflict_while_running_and_on_disk(start_daemon, node: Node, panel: Panel):
    d: Daemon = await start_daemon(remote=panel.url, write_limit=1)
    server = node.random_server(600_000, files=2)
    other = node.server()
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    # Same uuid while running: refused, also for another server.
    status, body = await d.post_backup(server, backup)
    assert status == 409 and set(body) == {"error"}, body
    assert (await d.post_backup(other, backup))[0] == 409

    # Same uuid while queued behind another backup of the same server.
    queued = new_uuid()
    assert (await d.post_backup(server, queued))[0] == 202
    assert (await d.post_backup(server, queued))[0] == 409

    await panel.wait_report(queued, timeout=30)
    await d.wait_idle()
    # Already on disk.
    status, body = await d.post_backup(server, backup)
    assert status == 409 and set(body) == {"error"}, body
    assert (await d.post_backup(other, queued))[0] == 409
    # Nothing more was reported for the refused requests.
    await asyncio.sleep(0.2)
    assert len(panel.reports(backup)) == 1 and len(panel.reports(queued)) == 1


async def test_conflict_with_legacy_archive(daemon: Daemon, node: Node):
    server = node.server()
    backup = new_uuid()
    (node.backups / f"{backup}.tar.gz").write_bytes(b"legacy")
    status, body = await daemon.post_backup(server, backup)
    assert status == 409, body


async def test_delete_then_404(daemon: Daemon, node: Node, panel: Panel):
    server = node.server()
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    archive = node.archive(server, backup)
    sidecar = archive.with_name(archive.name + ".sha1")
    assert archive.is_file() and sidecar.is_file()

    path = f"/api/servers/{server}/backup/{backup}"
    async with daemon.request("DELETE", path, headers=auth()) as r:
        assert r.status == 204
    assert not archive.exists() and not sidecar.exists()
    async with daemon.request("DELETE", path, headers=auth()) as r:
        assert r.status == 404
        assert set(await r.json()) == {"error"}


async def test_delete_legacy_archive(daemon: Daemon, node: Node):
    server = node.server()
    backup = new_uuid()
    legacy = node.backups / f"{backup}.tar.gz"
    legacy.write_bytes(b"legacy archive")
    async with daemon.request(
        "DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()
    ) as r:
        assert r.status == 204
    assert not legacy.exists()


async def test_delete_other_servers_backup_is_404(daemon: Daemon, node: Node, panel: Panel):
    server, other = node.server(), node.server()
    backup = new_uuid()
    assert (await daemon.post_backup(server, backup))[0] == 202
    await panel.wait_report(backup)
    async with daemon.request(
        "DELETE", f"/api/servers/{other}/backup/{backup}", headers=auth()
    ) as r:
        assert r.status == 404
    assert node.archive(server, backup).is_file()


async def test_ignore_lines_as_a_list(daemon: Daemon, node: Node, panel: Panel):
    """Some panels send the ignore lines as a JSON list."""
    server = node.server({"a.txt": "a", "b.log": "b", "c/d.txt": "d"})
    backup = new_uuid()
    status, _ = await daemon.post_backup(server, backup, ignore=["*.log", "c/"])  # type: ignore[arg-type]
    assert status == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    assert tar_names(node.archive(server, backup)) == {"a.txt"}


async def test_unfinished_backup_is_neither_deletable_nor_downloadable(
    start_daemon, node: Node, panel: Panel
):
    d: Daemon = await start_daemon(remote=panel.url, write_limit=1)
    server = node.random_server(800_000, files=2)
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    token = sign(download_claims(server, backup))
    async with d.request("DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()) as r:
        assert r.status == 409
        assert set(await r.json()) == {"error"}
    # The half-written archive is not visible under its final name, nor downloadable...
    assert not node.archive(server, backup).exists()
    async with d.request("GET", "/download/backup", params={"token": token}) as r:
        assert r.status == 404
    # ...and asking for it too early did not use up the one-time token.
    report = await panel.wait_report(backup, timeout=30)
    assert report.json["successful"] is True
    async with d.request("GET", "/download/backup", params={"token": token}) as r:
        assert r.status == 200
        assert await r.read() == node.archive(server, backup).read_bytes()


async def test_pteroignore_over_1_mib_fails_the_backup_naming_it(
    daemon: Daemon, node: Node, panel: Panel
):
    # Dropped whole once (over 32 KiB then): what it excludes went into the backup.
    lines = "*.secret\n" + "".join(f"world/region/r.{i}.mca\n" for i in range(60000))
    assert len(lines) > 1024 * 1024
    server = node.server({".pteroignore": lines, "db.secret": "s", "world.dat": "w"})
    backup = new_uuid()
    with structlog.testing.capture_logs() as logs:
        status, _ = await daemon.post_backup(server, backup)
        assert status == 202
        report = await panel.wait_report(backup)
    assert report.json["successful"] is False
    assert not node.archive(server, backup).exists()
    assert not node.temporaries(server)
    too_large = [e for e in logs if e["event"] == "pteroignore_too_large"]
    assert too_large and too_large[0]["path"] == ".pteroignore"
    failed = [e for e in logs if e["event"] == "backup_failed"]
    assert len(failed) == 1 and ".pteroignore is larger than 1048576 bytes" in failed[0]["error"]


async def test_pteroignore_over_32_kib_applies(daemon: Daemon, node: Node, panel: Panel):
    lines = "*.secret\n" + "".join(f"world/region/r.{i}.mca\n" for i in range(3000))
    assert 32 * 1024 < len(lines) < 1024 * 1024
    server = node.server({".pteroignore": lines, "db.secret": "s", "world.dat": "w"})
    backup = new_uuid()
    status, _ = await daemon.post_backup(server, backup)
    assert status == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    assert tar_names(node.archive(server, backup)) == {".pteroignore", "world.dat"}
