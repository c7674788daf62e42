"""A Move out of the file manager's ``.backups`` folder (a single-path restore) killed at each
of its steps, with the real daemon process in front of the Wings stand-in: the start after
the kill finishes or undoes it, and nothing of the server stays under a hidden name
(wingsbak/browse/restore.py PendingTemps)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import backed_up, call, in_front

from tests.support.daemon_helpers import PELICAN, DaemonProcess, Node, Panel, paused, wait_until
from tests.support.wings_standin import WingsStandin

FILES = {f"world/region/r.{i}.mca": f"saved {i}\n" * 200 for i in range(20)}
FILES["world/level.dat"] = "level as saved"
# The step -> whether the live folder is the backup's afterwards (rolled forward).
STEPS = {"browse-restore-built": False, "browse-restore-swapped": True}


def contents(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".wingsbak-part-*"))


@pytest.mark.parametrize("step", list(STEPS))
async def test_a_move_killed_at_each_step_is_finished_or_undone(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    monkeypatch.setenv("WINGSBAK_FAILPOINT", f"{step}:pause")
    proc = in_front(daemon_process, node, wings, panel, PELICAN)
    await proc.start()
    monkeypatch.delenv("WINGSBAK_FAILPOINT")  # the restart runs without it
    server = node.server(dict(FILES))
    wings.server(server)
    root = node.data / server
    await backed_up(proc, panel, server)
    saved = contents(root / "world")
    (root / "world/level.dat").write_text("griefed")
    (root / "world/region/r.3.mca").unlink()
    (root / "world/added.txt").write_text("after the backup")
    griefed = contents(root / "world")

    status, listing = await call(
        proc, "GET", f"/api/servers/{server}/files/list-directory?directory=/.backups"
    )
    assert status == 200, listing
    folder = listing[0]["name"]
    moved = [{"from": "world", "to": "../../world"}]
    body: dict[str, Any] = {"root": f"/.backups/{folder}", "files": moved}
    move = asyncio.ensure_future(call(proc, "PUT", f"/api/servers/{server}/files/rename", body))
    assert proc.proc is not None
    await wait_until(lambda: paused(proc.proc), f"the daemon to stop at {step}")
    assert hidden(root)  # the temporary is there: the copy, or the old folder swapped out
    assert await proc.stop(signal.SIGKILL) == -signal.SIGKILL
    move.cancel()

    await proc.start()
    assert hidden(root) == []
    assert contents(root / "world") == (saved if STEPS[step] else griefed)
    assert "browse_restore_interrupted_cleaned" in proc.logs()
    assert await proc.stop() == 0


async def test_a_full_restore_is_refused_while_a_move_writes_into_the_server(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full restore does not wait for a Move: started meanwhile, it would delete the Move's
    temporary or have the Move's folder swapped in over what it restored. It gets a 409
    while a Move runs (held here at its start for 3 s), and runs once the Move is done."""
    monkeypatch.setenv("WINGSBAK_FAILPOINT", "browse-restore-started:delay:3")
    proc = in_front(daemon_process, node, wings, panel, PELICAN)
    await proc.start()
    server = node.server(dict(FILES))
    wings.server(server)
    root = node.data / server
    backup = await backed_up(proc, panel, server)
    (root / "world/level.dat").write_text("griefed")
    status, listing = await call(
        proc, "GET", f"/api/servers/{server}/files/list-directory?directory=/.backups"
    )
    assert status == 200, listing
    moved = [{"from": "world/level.dat", "to": "../../world/level.dat"}]
    body: dict[str, Any] = {"root": f"/.backups/{listing[0]['name']}", "files": moved}
    move = asyncio.ensure_future(call(proc, "PUT", f"/api/servers/{server}/files/rename", body))
    await wait_until(lambda: "failpoint_reached" in proc.logs(), "the Move to be held")

    assert await proc.post_restore(server, backup) == 409
    assert (await move)[0] == 204
    assert (root / "world/level.dat").read_text() == "level as saved"
    assert await proc.post_restore(server, backup) == 202
    await panel.wait_report(backup, restore=True)
    assert await proc.stop() == 0


# The path moved -> what the Move answers once a racing writer has put a symlink to a folder
# outside the server where ``world`` was, while the restored copy waited to be renamed in.
RACED = {"world/level.dat": 204, "world": 400}


@pytest.mark.parametrize("moved", list(RACED))
async def test_a_move_raced_by_a_writer_that_swaps_in_a_symlink_writes_nothing_through_it(
    daemon_process: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    moved: str,
) -> None:
    """The daemon is stopped with its copy built beside the destination; meanwhile the
    server's own process moves ``world`` aside and puts a symlink to a folder outside the
    server in its place. The Move goes on through the folder it opened (a file lands in the
    real folder, under its new name) or refuses the swap (a folder: the name no longer holds
    a folder); nothing is written through the link and nothing stays under a hidden name."""
    monkeypatch.setenv("WINGSBAK_FAILPOINT", "browse-restore-built:pause")
    proc = in_front(daemon_process, node, wings, panel, PELICAN)
    await proc.start()
    server = node.server(dict(FILES))
    wings.server(server)
    root = node.data / server
    await backed_up(proc, panel, server)
    (root / "world/level.dat").write_text("griefed")
    griefed = contents(root / "world")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the server's")

    status, listing = await call(
        proc, "GET", f"/api/servers/{server}/files/list-directory?directory=/.backups"
    )
    assert status == 200, listing
    pair = {"from": moved, "to": f"../../{moved}"}
    body = {"root": f"/.backups/{listing[0]['name']}", "files": [pair]}
    move = asyncio.ensure_future(call(proc, "PUT", f"/api/servers/{server}/files/rename", body))
    assert proc.proc is not None
    await wait_until(lambda: paused(proc.proc), "the daemon to stop with its copy built")
    (root / "world").rename(root / "world.real")
    (root / "world").symlink_to(outside)
    proc.proc.send_signal(signal.SIGCONT)
    status, answer = await move

    assert status == RACED[moved], answer
    assert contents(outside) == {"keep.txt": b"not the server's"}
    assert (root / "world").is_symlink()
    assert hidden(root) == [] and hidden(outside) == []
    if moved == "world/level.dat":
        assert (root / "world.real/level.dat").read_text() == "level as saved"
    else:
        assert answer["error"] == "Cannot move or rename file, destination already exists."
        assert contents(root / "world.real") == griefed
    assert await proc.stop() == 0
