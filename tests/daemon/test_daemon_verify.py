"""Verified backups, against the real daemon process: the schedule reads every local archive
whole and finds a flipped byte, a truncation and a broken sidecar (logged, counted,
announced once, never deleted); its state survives a restart; ``wingsbak verify`` finds the
same on demand, by uuid and by path, with its exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid, wait_until
from tests.support.trust_helpers import (
    WebhookReceiver,
    flip_byte,
    log_events,
    metrics,
    truncate,
    wait_event,
)

MIB = 1024 * 1024


async def backed_up(proc: DaemonProcess, node: Node, panel: Panel) -> tuple[str, str, Path]:
    """A new server and one successful backup of it: (server, backup, archive)."""
    server = node.server({"world/level.dat": "x" * 50_000, "server.properties": "motd=hi\n"})
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    return server, backup, node.archive(server, backup)


def count(proc: DaemonProcess, event: str, backup: str) -> int:
    return len([e for e in log_events(proc.log_path, event) if e.get("backup") == backup])


def verified(proc: DaemonProcess, backup: str) -> int:
    return count(proc, "backup_verified", backup)


async def test_the_schedule_finds_damaged_archives_and_keeps_them(
    daemon_process, node: Node, panel: Panel
) -> None:
    receiver = WebhookReceiver()
    await receiver.start()
    proc: DaemonProcess = daemon_process(
        remote=panel.url, verify_interval=0.3, verify_read_limit=0, notify_url=receiver.url
    )
    await proc.start()
    made = [await backed_up(proc, node, panel) for _ in range(4)]
    for _server, backup, _path in made:  # each read whole and found sound first
        await wait_event(proc.log_path, "backup_verified", backup=backup, store="local")
    (sound, flipped, cut, sidecar) = made
    flip_byte(flipped[2])
    truncate(cut[2])
    side = sidecar[2].with_name(sidecar[2].name + ".sha1")
    side.write_text("0" * 40 + side.read_text()[40:])

    reasons = {}
    for server, backup, path in (flipped, cut, sidecar):
        line = await wait_event(
            proc.log_path, "backup_corrupt", backup=backup, server=server, store="local"
        )
        assert line["location"] == str(path)
        reasons[backup] = line["reason"]
    assert "corrupt" in reasons[flipped[1]]
    assert "truncated" in reasons[cut[1]]
    assert "does not match its recorded sha1 checksum" in reasons[sidecar[1]]

    # Found again at every check, announced once.
    for _server, backup, _path in (flipped, cut, sidecar):
        await _until(lambda b=backup: count(proc, "backup_corrupt", b) >= 3)
    before = verified(proc, sound[1])
    await _until(lambda: verified(proc, sound[1]) > before)
    await receiver.wait(3)
    notes = {r.body["backup"]: r.body for r in receiver.received}
    assert len(receiver.received) == 3 and set(notes) == {flipped[1], cut[1], sidecar[1]}
    for server, backup, _path in (flipped, cut, sidecar):
        note = notes[backup]
        assert note["event"] == "backup_corrupt" and note["server"] == server
        assert note["store"] == "local" and note["error"] == reasons[backup]
        assert note["content"] == note["text"] and backup in note["content"]
    assert receiver.refused == []

    # Never deleted: the archives and their sidecars stay where they were.
    for _server, _backup, path in made:
        assert path.exists() and path.with_name(path.name + ".sha1").exists()
    m = await metrics(proc.url)
    assert m['wingsbak_backup_corrupt_total{store="local"}'] == 3
    assert m["wingsbak_backups_corrupt"] == 3
    assert m['wingsbak_backup_verified_total{store="local"}'] >= 4
    await proc.stop()
    await receiver.shutdown()


async def _until(predicate: Callable[[], bool]) -> None:
    await wait_until(predicate, "the daemon's log", timeout=30)


async def test_a_restart_neither_checks_everything_again_nor_forgets(
    daemon_process, node: Node, panel: Panel
) -> None:
    proc: DaemonProcess = daemon_process(remote=panel.url, verify_interval=0)
    await proc.start()
    a = await backed_up(proc, node, panel)
    b = await backed_up(proc, node, panel)
    await proc.stop()
    backups = proc.config["system"]["backups"]

    # A day's interval: the first start checks what was never checked, once.
    backups["verify_interval"] = 86400
    await proc.start()
    done = await wait_event(proc.log_path, "verify_pass_done")
    assert done["archives"] == 2
    assert verified(proc, a[1]) == verified(proc, b[1]) == 1
    await proc.stop()

    # A new archive appears while the daemon is down (another layout: Pelican Wings').
    c_server = node.server()
    c = new_uuid()
    (node.backups / c_server).mkdir()
    shutil.copy(a[2], node.backups / c_server / f"{c}.tar.gz")
    passes = len(log_events(proc.log_path, "verify_pass_done"))
    await proc.start()
    await _until(lambda: len(log_events(proc.log_path, "verify_pass_done")) > passes)
    assert log_events(proc.log_path, "verify_pass_done")[-1]["archives"] == 1
    line = await wait_event(proc.log_path, "backup_verified", backup=c)
    assert line["server"] == c_server and line["checksum"] is None  # no sidecar: Wings' own
    assert verified(proc, a[1]) == verified(proc, b[1]) == 1
    await proc.stop()

    # Once the interval has passed (a short one now), all of them are due again.
    backups["verify_interval"] = 0.5
    await proc.start()
    await wait_event(proc.log_path, "verify_pass_done")
    await _until(lambda: verified(proc, a[1]) >= 2 and verified(proc, b[1]) >= 2)
    state = json.loads((node.backups / ".wingsbak-verify.json").read_text())
    assert f"local:{a[2]}" in state["archives"]
    await proc.stop()


async def wingsbak_verify(*args: str) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wingsbak",
        "verify",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await p.communicate()
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def test_wingsbak_verify_by_uuid_and_by_path(
    daemon_process, node: Node, panel: Panel, tmp_path: Path
) -> None:
    proc: DaemonProcess = daemon_process(remote=panel.url, verify_interval=0)
    await proc.start()
    sound = await backed_up(proc, node, panel)
    flipped = await backed_up(proc, node, panel)
    cut = await backed_up(proc, node, panel)
    flip_byte(flipped[2])
    truncate(cut[2])
    cfg = str(node.root / "cfg.yml")

    rc, out, _ = await wingsbak_verify("--config", cfg, sound[1])
    assert rc == 0, out
    assert out.startswith(f"ok         local  {sound[0]}/{sound[1]} ({sound[2]})")
    assert "sha1 matches" in out
    rc, out, _ = await wingsbak_verify("--config", cfg, flipped[1])
    assert rc == 1, out
    assert out.startswith(f"CORRUPT    local  {flipped[0]}/{flipped[1]}")

    # The path of any .tar.gz, with or without its sidecar.
    assert (await wingsbak_verify(str(sound[2])))[0] == 0
    bare = tmp_path / "copy.tar.gz"
    shutil.copy(sound[2], bare)
    rc, out, _ = await wingsbak_verify(str(bare))
    assert rc == 0 and "no checksum recorded" in out, out
    rc, out, _ = await wingsbak_verify(str(cut[2]))
    assert rc == 1 and "truncated" in out, out
    shutil.copy(flipped[2], bare)  # without the sidecar, the gzip CRC still tells
    assert (await wingsbak_verify(str(bare)))[0] == 1
    # gzip agrees on both damaged ones.
    for path in (flipped[2], cut[2]):
        assert subprocess.run(["gzip", "-t", str(path)], capture_output=True).returncode != 0

    # Every backup of the node: one line each, then the tally.
    rc, out, _ = await wingsbak_verify("--config", cfg)
    assert rc == 1, out
    lines = out.splitlines()
    assert len(lines) == 4 and lines[-1] == "3 checked: 1 sound, 2 corrupt, 0 not checked"
    # Nothing to find, or nothing to read.
    rc, _, err = await wingsbak_verify("--config", cfg, new_uuid())
    assert rc == 2 and "no backup" in err
    rc, _, err = await wingsbak_verify(str(tmp_path / "missing.tar.gz"))
    assert rc == 2 and "neither a file nor a backup uuid" in err
    await proc.stop()


def holds_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except OSError:
        return False


async def test_kill_9_in_the_middle_of_a_check_changes_nothing(
    daemon_process, node: Node, panel: Panel
) -> None:
    proc: DaemonProcess = daemon_process(remote=panel.url, verify_interval=0)
    await proc.start()
    server = node.random_server(8 * MIB, files=2)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert (await panel.wait_report(backup)).json["successful"] is True
    archive = node.archive(server, backup)
    await proc.stop()
    before = archive.read_bytes()

    # 1 MiB/s: the check of the 8 MiB archive is under way for seconds.
    proc.config["system"]["backups"].update(verify_interval=3600, verify_read_limit=1)
    await proc.start()
    assert proc.proc is not None
    pid = proc.proc.pid
    await wait_until(lambda: holds_open(pid, archive), "the check to read the archive")
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    assert archive.read_bytes() == before
    done = subprocess.run(["sha1sum", "-c", archive.name + ".sha1"], cwd=archive.parent)
    assert done.returncode == 0
    state = node.backups / ".wingsbak-verify.json"
    if state.exists():  # written whole or not at all
        json.loads(state.read_text())
    assert not list(node.backups.glob("*.tmp"))

    # After the restart the check that was cut short is done.
    proc.config["system"]["backups"]["verify_read_limit"] = 0
    await proc.start()
    await wait_event(proc.log_path, "backup_verified", backup=backup)
    await proc.stop()
