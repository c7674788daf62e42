"""The swap of a truncating restore under kill -9 and under a process writing into the server.

A kill at any step of the real daemon process, then a restart: the server root is the whole
old tree (killed before the swap was committed, reported failed) or the whole restored tree
(killed after, reported successful), never a mix, and nothing stays in a hidden folder. The
exact step is reached with the daemon's failpoint seam (wingsbak/failpoint.py): the daemon
stops itself there (SIGSTOP), the test kills it. A process that recreates a name during the
swap (an SFTP upload, which Wings does not hold) makes neither the swap nor its undo fail: its
entry is kept under a visible name beside it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from restore_helpers import snapshot

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid, paused, wait_until
from wingsbak.archive import archive_to_file
from wingsbak.archive.extract import recover_stagings
from wingsbak.archive.staging import CONFLICT_SUFFIX, STAGING_PREFIX

SERVER = "5c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f"
# step -> whether a kill there leaves a committed restore
STEPS = {
    "restore-extracting": False,
    "restore-moving-out": False,
    "restore-between-halves": False,
    "restore-moving-in": False,
    "restore-committed": True,
    "restore-removing-old": True,
}
OLD_DIRS = 20


def old_tree(root: Path) -> None:
    """2,000 files in 20 top-level folders, and a few files at the top."""
    for d in range(OLD_DIRS):
        folder = root / f"old-{d:02}"
        folder.mkdir(parents=True)
        for i in range(100):
            (folder / f"f{i}.dat").write_bytes(os.urandom(300))
    (root / "world").mkdir()
    (root / "world" / "level.dat").write_bytes(b"the old world")
    (root / "server.properties").write_text("motd=the server before\n")


def new_tree(src: Path) -> None:
    """500 files: the backup."""
    for i in range(400):
        folder = src / "world" / f"region-{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"r{i}.mca").write_bytes(os.urandom(500))
    for i in range(99):
        (src / "plugins").mkdir(exist_ok=True)
        (src / "plugins" / f"p{i}.jar").write_bytes(os.urandom(200))
    (src / "server.properties").write_text("motd=the backup\n")


def hidden_leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".wingsbak"))


def stopped(proc: DaemonProcess) -> bool:
    assert proc.proc is not None
    try:
        return paused(proc.proc)
    except AssertionError as e:
        e.add_note(proc.logs())
        raise


def without(snap: dict[str, Any], name: str) -> dict[str, Any]:
    """A snapshot without the top-level entry ``name`` and what it holds."""
    return {k: v for k, v in snap.items() if k != name and not k.startswith(name + "/")}


def journal(node: Node) -> dict[str, Any]:
    path = node.backups / ".wingsbak-journal.json"
    return json.loads(path.read_text()) if path.exists() else {}


class Setup:
    def __init__(self, node: Node, tmp_path: Path) -> None:
        self.root = node.data / SERVER
        old_tree(self.root)
        src = tmp_path / "src"
        new_tree(src)
        self.backup = new_uuid()
        archive = node.archive(SERVER, self.backup)
        archive.parent.mkdir(parents=True)
        archive_to_file(src, archive)
        self.before = snapshot(self.root)
        self.after = snapshot(src)


@pytest.fixture
def setup(node: Node, tmp_path: Path) -> Setup:
    return Setup(node, tmp_path)


async def paused_at(
    step: str,
    make: Callable[..., DaemonProcess],
    panel: Panel,
    setup: Setup,
    monkeypatch: pytest.MonkeyPatch,
) -> DaemonProcess:
    """A daemon that was asked for the truncating restore and stopped itself at ``step``."""
    monkeypatch.setenv("WINGSBAK_FAILPOINT", f"{step}:pause")
    proc = make(remote=panel.url)
    await proc.start()
    monkeypatch.delenv("WINGSBAK_FAILPOINT")  # the restart runs without it
    assert await proc.post_restore(SERVER, setup.backup) == 202
    await wait_until(lambda: stopped(proc), f"the daemon to stop at {step}")
    return proc


@pytest.mark.parametrize("step", list(STEPS))
async def test_kill_9_at_each_step_of_a_truncating_restore(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    panel: Panel,
    setup: Setup,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    proc = await paused_at(step, daemon_process, panel, setup, monkeypatch)
    staging = setup.root / f"{STAGING_PREFIX}{setup.backup}"
    if step == "restore-removing-old":
        left = [p.name for p in (staging / "old").iterdir()]
        assert 0 < len(left) < OLD_DIRS + 2  # the old tree is half-deleted
    if step == "restore-committed":
        assert snapshot(setup.root, skip=staging) == setup.after
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    assert panel.reports(setup.backup, restore=True) == []

    await proc.start()
    committed = STEPS[step]
    report = await panel.wait_report(setup.backup, restore=True)
    assert report.json == {"successful": committed}
    assert snapshot(setup.root) == (setup.after if committed else setup.before)
    assert hidden_leftovers(setup.root) == []
    # The journal entry goes once the report is in the outbox: after the panel may have it.
    await wait_until(lambda: journal(node) == {}, "the journal entry to be forgotten")
    assert await proc.stop() == 0
    assert len(panel.reports(setup.backup, restore=True)) == 1
    assert "interrupted_restore_staging_finished" in proc.logs()
    assert ("rolled_forward" if committed else "undone") in proc.logs()


async def test_a_name_taken_between_the_two_halves_of_the_swap_is_kept_beside_it(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    panel: Panel,
    setup: Setup,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upload recreates ``world/upload.part`` once the old ``world`` is moved out: the
    restore wins, the upload is kept under a visible name beside it."""
    proc = await paused_at("restore-between-halves", daemon_process, panel, setup, monkeypatch)
    (setup.root / "world").mkdir()
    (setup.root / "world" / "upload.part").write_bytes(b"half an upload")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGCONT)
    report = await panel.wait_report(setup.backup, restore=True)
    assert report.json == {"successful": True}
    aside = f"world{CONFLICT_SUFFIX}"
    assert (setup.root / aside / "upload.part").read_bytes() == b"half an upload"
    assert without(snapshot(setup.root), aside) == setup.after
    assert hidden_leftovers(setup.root) == []
    # The journal entry goes once the report is in the outbox: after the panel may have it.
    await wait_until(lambda: journal(node) == {}, "the journal entry to be forgotten")
    assert await proc.stop() == 0
    assert "restore_newcomer_kept" in proc.logs()


async def test_the_undo_after_a_kill_keeps_a_newcomer_beside_the_old_entry(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    panel: Panel,
    setup: Setup,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed while the old entries move out, one of them already recreated by an upload:
    recovery puts the old entry back under its name and keeps the newcomer beside it."""
    proc = await paused_at("restore-moving-out", daemon_process, panel, setup, monkeypatch)
    staging = setup.root / f"{STAGING_PREFIX}{setup.backup}"
    [moved] = [p.name for p in (staging / "old").iterdir()]
    newcomer = setup.root / moved
    if (staging / "old" / moved).is_dir():
        newcomer.mkdir()
        (newcomer / "upload.part").write_bytes(b"half an upload")
    else:
        newcomer.write_bytes(b"half an upload")
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL

    await proc.start()
    report = await panel.wait_report(setup.backup, restore=True)
    assert report.json == {"successful": False}
    aside = setup.root / f"{moved}{CONFLICT_SUFFIX}"
    assert aside.exists()
    assert without(snapshot(setup.root), aside.name) == setup.before
    assert hidden_leftovers(setup.root) == []
    # The journal entry goes once the report is in the outbox: after the panel may have it.
    await wait_until(lambda: journal(node) == {}, "the journal entry to be forgotten")
    assert await proc.stop() == 0
    assert "restore_newcomer_kept" in proc.logs()


@pytest.fixture
def writer(node: Node) -> Iterator[Callable[[Path], threading.Event]]:
    """``writer(root)``: a thread that keeps recreating ``world/upload.part`` in ``root``
    (as an SFTP upload does) until the event it returns is set."""
    threads: list[tuple[threading.Thread, threading.Event]] = []

    def start(root: Path) -> threading.Event:
        done = threading.Event()

        def run() -> None:
            n = 0
            while not done.is_set():
                n += 1
                try:
                    (root / "world").mkdir(exist_ok=True)
                    (root / "world" / "upload.part").write_bytes(b"upload %d" % n)
                except OSError:
                    pass  # moved away meanwhile: made again on the next turn

        thread = threading.Thread(target=run, name="sftp-upload-standin")
        thread.start()
        threads.append((thread, done))
        return done

    yield start
    for thread, done in threads:
        done.set()
        thread.join()


async def test_a_writer_racing_the_swap_never_strands_the_server_in_the_staging(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    panel: Panel,
    tmp_path: Path,
    writer: Callable[[Path], threading.Event],
) -> None:
    root = node.data / SERVER
    root.mkdir(parents=True)
    for i in range(3000):  # many top-level entries: the swap takes long enough to be raced
        (root / f"old-{i}.txt").write_text(f"old {i}")
    src = tmp_path / "src"
    for i in range(1000):
        (src / f"new-{i}.txt").parent.mkdir(parents=True, exist_ok=True)
        (src / f"new-{i}.txt").write_text(f"new {i}")
    (src / "world").mkdir()
    (src / "world" / "level.dat").write_bytes(b"the restored world")
    backup = new_uuid()
    archive = node.archive(SERVER, backup)
    archive.parent.mkdir(parents=True)
    archive_to_file(src, archive)
    proc = daemon_process(remote=panel.url)
    await proc.start()
    done = writer(root)
    assert await proc.post_restore(SERVER, backup) == 202
    report = await panel.wait_report(backup, restore=True, timeout=60)
    done.set()
    assert report.json == {"successful": True}, proc.logs()
    assert hidden_leftovers(root) == []
    for path in src.rglob("*"):
        if path.is_file():
            assert (root / path.relative_to(src)).read_bytes() == path.read_bytes()
    # Nothing of the old tree: what is not the backup's is the upload's.
    extra = {p.relative_to(root).as_posix() for p in root.rglob("*")} - {
        p.relative_to(src).as_posix() for p in src.rglob("*")
    }
    assert all("upload.part" in e or e.startswith(f"world{CONFLICT_SUFFIX}") for e in extra), extra
    # The journal entry goes once the report is in the outbox: after the panel may have it.
    await wait_until(lambda: journal(node) == {}, "the journal entry to be forgotten")
    assert await proc.stop() == 0


def chattr(path: Path, flag: str) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr is not available here: {done.stderr.strip()}")


async def test_a_staging_that_cannot_be_removed_keeps_its_journal_entry(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    panel: Panel,
    setup: Setup,
) -> None:
    """The old tree cannot all be deleted (an immutable file): the restore is reported
    successful, its journal entry stays while its staging does, and the next start finishes
    the deletion without reporting it again."""
    chattr(setup.root / "old-00" / "f0.dat", "+i")
    try:
        proc = daemon_process(remote=panel.url)
        await proc.start()
        assert await proc.post_restore(SERVER, setup.backup) == 202
        report = await panel.wait_report(setup.backup, restore=True)
        assert report.json == {"successful": True}
        staging = setup.root / f"{STAGING_PREFIX}{setup.backup}"
        assert snapshot(setup.root, skip=staging) == setup.after
        await wait_until(lambda: setup.backup in journal(node), "the journal to keep the entry")
        assert journal(node)[setup.backup]["reported"] is True
        assert await proc.stop() == 0
        assert "restore_staging_left" in proc.logs()
    finally:
        subprocess.run(["chattr", "-R", "-i", str(setup.root)], capture_output=True)
    await node.outbox_settled()
    await proc.start()
    await wait_until(lambda: journal(node) == {}, "recovery to finish the staging")
    assert snapshot(setup.root) == setup.after
    assert hidden_leftovers(setup.root) == []
    assert await proc.stop() == 0
    assert len(panel.reports(setup.backup, restore=True)) == 1


def cli_restore_paused_at(step: str, archive: Path, dest: Path) -> subprocess.Popen[bytes]:
    """``wingsbak restore --truncate`` stopped at ``step`` (SIGSTOP), as a real process."""
    env = {**os.environ, "WINGSBAK_FAILPOINT": f"{step}:pause"}
    cmd = [sys.executable, "-m", "wingsbak", "restore", "--truncate", str(archive), str(dest)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("step", ["restore-moving-in", "restore-removing-old"])
async def test_an_orphan_staging_is_finished_at_start(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    panel: Panel,
    setup: Setup,
    step: str,
) -> None:
    """A staging no journal entry covers (here a ``wingsbak restore`` killed in a server's
    directory) is found at start and finished: undone before its commit, rolled forward
    after; nothing is reported (the panel never asked for it)."""
    archive = node.archive(SERVER, setup.backup)
    cli = cli_restore_paused_at(step, archive, setup.root)
    try:
        await wait_until(lambda: paused(cli), f"the command to stop at {step}")
    finally:
        cli.kill()
        cli.communicate()
    assert [p.name for p in setup.root.iterdir() if p.name.startswith(STAGING_PREFIX)] == [
        f"{STAGING_PREFIX}{cli.pid}"
    ]
    proc = daemon_process(remote=panel.url)
    await proc.start()  # up once recovery is done
    committed = step == "restore-removing-old"
    assert snapshot(setup.root) == (setup.after if committed else setup.before)
    assert hidden_leftovers(setup.root) == []
    assert await proc.stop() == 0
    assert panel.reports(setup.backup, restore=True) == []
    assert "orphan_restore_staging_finished" in proc.logs()


def test_the_engine_undo_keeps_a_newcomer_beside_the_old_entry(setup: Setup, node: Node) -> None:
    """The same without the daemon: ``wingsbak restore`` killed mid-swap, an entry recreated
    meanwhile, then the engine's recovery."""
    archive = node.archive(SERVER, setup.backup)
    cli = cli_restore_paused_at("restore-moving-out", archive, setup.root)
    try:
        deadline = time.monotonic() + 15
        while not paused(cli):
            assert time.monotonic() < deadline, "the command never reached its failpoint"
            time.sleep(0.01)
    finally:
        cli.kill()
        cli.communicate()
    staging = setup.root / f"{STAGING_PREFIX}{cli.pid}"
    [moved] = [p.name for p in (staging / "old").iterdir()]
    (setup.root / moved).mkdir()
    (setup.root / moved / "upload.part").write_bytes(b"half an upload")
    [found] = recover_stagings(setup.root)
    assert (found.committed, found.error) == (False, "")
    aside = f"{moved}{CONFLICT_SUFFIX}"
    assert (setup.root / aside / "upload.part").read_bytes() == b"half an upload"
    assert without(snapshot(setup.root), aside) == setup.before
    assert hidden_leftovers(setup.root) == []
