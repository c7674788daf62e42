"""A running game's backup (issue 22, section 1), a real daemon process in front of the Wings
stand-in: the wait for the game's console line on Wings' websocket (and its timeout), the
rules per game, the after commands as soon as the files are read and after a failure, the
backup equal to the files as the game saved them, the clone on a file system that clones
(a loop-mounted XFS image) and its removal after kill -9, and the fallback elsewhere."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tarfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.daemon_helpers import (
    DaemonProcess,
    Node,
    Panel,
    auth,
    mounted_xfs,
    new_uuid,
    sign,
    wait_until,
    ws_claims,
)
from tests.support.wings_standin import WingsStandin, start_game

ROOT = Path(__file__).resolve().parents[2]
JAVA_IMAGE = "ghcr.io/pterodactyl/yolks:java_21"
JAVA_STARTUP = (
    "java -Xms128M -XX:MaxRAMPercentage=95.0 -Dterminal.jline=false -Dterminal.ansi=true "
    "-jar {{SERVER_JARFILE}}"
)
SAVE = {
    "console_before": ["save-off", "save-all flush"],
    "console_wait_for": "Saved the game",
    "console_after": ["save-on"],
}


def shipped_rules() -> list[dict[str, Any]]:
    """The rules config.example.yml ships."""
    raw = yaml.safe_load((ROOT / "config.example.yml").read_text())
    rules: list[dict[str, Any]] = raw["system"]["backups"]["quiesce"]
    return rules


def log_events(proc: DaemonProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in proc.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


def archived(archive: Path) -> dict[str, bytes]:
    out = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                out[member.name] = f.read()
    return out


def region_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k.startswith("world/region/")}


def clones(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.name.startswith(".wingsbak-clone-"))


@pytest.fixture
def front_process(
    daemon_process: Callable[..., DaemonProcess], wings: WingsStandin, panel: Panel
) -> Callable[..., Any]:
    """``await front_process(**system.backups)``: a started daemon process in front of the
    stand-in, whose console checks the Origin against the panel's URL, as Wings does."""
    wings.console.remote = panel.url

    async def start(**backups: Any) -> DaemonProcess:
        proc = daemon_process(remote=panel.url, **backups)
        proc.config["api"]["upstream"] = wings.url
        await proc.start()
        return proc

    return start


async def metric(proc: DaemonProcess, name: str) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proc.url}/metrics", headers=auth()) as r,
    ):
        text = await r.text()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


# -- the target: the backup equals the files as the game saved them ---------------------------


async def test_minecraft_rule_backup_equals_the_files_as_saved(
    front_process, node: Node, panel: Panel, wings: WingsStandin
):
    """The shipped Minecraft rule: save-off and save-all flush, the wait for "Saved the game"
    on the console (the game writes its region files until it prints it), then the files
    are read, then save-on. The archive holds exactly the files as the game saved them."""
    proc = await front_process(quiesce=shipped_rules())
    server = node.server()
    game = start_game(wings, server, image=JAVA_IMAGE, invocation=JAVA_STARTUP)
    await wait_until(lambda: game.generation >= 3, "the game to be writing")
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    report = await panel.wait_report(backup, timeout=60)
    assert report.json["successful"] is True, proc.logs()
    assert game.saved is not None
    assert region_files(archived(node.archive(server, backup))) == game.saved
    s = wings.servers[server]
    assert s.commands == ["save-off", "save-all flush", "save-on"]
    # The console socket wingsbak opened: the panel's URL as its Origin, a token that may
    # connect (and do nothing else), for this server.
    assert panel.url in wings.console.origins and wings.console.refused == []
    [claims] = wings.console.claims
    assert claims["server_uuid"] == server and claims["permissions"] == ["websocket.connect"]
    [done] = log_events(proc, "backup_completed")
    assert done["quiesce_rule"] == "minecraft-java"
    assert done["quiesce"].startswith("saving paused for ")
    assert done["saving_paused_seconds"] > 0 and "consistent" not in done
    # The node's disk (ext4 here) cannot clone: the live files were read, and nothing is left.
    assert log_events(proc, "clone_unavailable") and not log_events(proc, "clone_made")
    assert clones(node.data) == []
    assert log_events(proc, "console_line_seen")
    assert 'wingsbak_backup_saving_paused_seconds_count 1.0' in await metric(
        proc, "wingsbak_backup_saving_paused_seconds_count"
    )


async def test_no_line_within_the_timeout_backup_made_and_flagged(
    front_process, node: Node, panel: Panel, wings: WingsStandin
):
    """A game that never prints the line: the backup is made after console_wait_timeout,
    and its log line, its event and a metric say it may be inconsistent."""
    proc = await front_process(**SAVE, console_wait_timeout=1)
    server = node.server()
    game = start_game(wings, server, prints=False)
    async with _events(proc, server) as events:
        backup = new_uuid()
        assert await proc.post_backup(server, backup) == 202
        report = await panel.wait_report(backup, timeout=60)
        assert report.json["successful"] is True
        completed = await events("backup completed")
    assert node.archive(server, backup).is_file()
    saving_on = "Automatic saving is now enabled"  # save-on went too
    await wait_until(lambda: game.printed[-1].endswith(saving_on), "save-on")
    [flag] = log_events(proc, "backup_maybe_inconsistent")
    assert "Saved the game" in flag["reason"] and flag["backup"] == backup
    [done] = log_events(proc, "backup_completed")
    assert done["consistent"] is False and "may be inconsistent" in done["quiesce"]
    assert completed["consistent"] is False and "may be inconsistent" in completed["quiesce"]
    assert completed["uuid"] == backup and completed["is_successful"] is True
    line = await metric(proc, "wingsbak_backups_maybe_inconsistent_total")
    assert line == f'wingsbak_backups_maybe_inconsistent_total{{server="{server}"}} 1.0'


async def test_console_refused_for_its_origin_backup_made_and_flagged(
    front_process, node: Node, panel: Panel, wings: WingsStandin
):
    """Wings refuses the console socket when the Origin is not its panel's URL: the wait
    cannot happen, the commands still go, and the backup is flagged."""
    proc = await front_process(**SAVE)
    wings.console.remote = "https://another-panel.example.com"
    server = node.server()
    start_game(wings, server)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    assert wings.console.refused == [panel.url]
    [unavailable] = log_events(proc, "console_wait_unavailable")
    assert "403" in unavailable["error"] and "Origin" in unavailable["error"]
    assert log_events(proc, "backup_maybe_inconsistent")
    assert wings.servers[server].commands == ["save-off", "save-all flush", "save-on"]


@contextlib.asynccontextmanager
async def _events(proc: DaemonProcess, server: str) -> AsyncIterator[Callable[..., Any]]:
    """The daemon's console socket for ``server`` (relayed to the stand-in), as the panel's
    browser opens it: ``await events(name)`` is the payload of the next ``name`` event."""
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(
            f"{proc.url}/api/servers/{server}/ws", headers={"Origin": proc.config["remote"]}
        ) as ws,
    ):
        # scope: Pelican's panel always sends it and Pelican Wings requires it (HasScope).
        token = sign(ws_claims(server, scope="websocket"))
        await ws.send_json({"event": "auth", "args": [token]})

        async def next_event(name: str) -> dict[str, Any]:
            while True:
                msg = await ws.receive_json(timeout=30)
                if msg["event"] == name:
                    payload: dict[str, Any] = json.loads(msg["args"][0]) if msg.get("args") else {}
                    return payload

        await next_event("auth success")
        yield next_event


# -- per-game rules -------------------------------------------------------------------------


async def test_rules_are_chosen_by_image_or_invocation_first_match_wins(
    front_process, node: Node, panel: Panel, wings: WingsStandin
):
    rules = [
        {"name": "both", "image": "yolks:java_", "invocation": "paper", "before": ["both"]},
        {"name": "java", "image": "yolks:java_", "before": ["java-b"], "after": ["java-a"]},
        {"name": "valheim", "invocation": "valheim_server", "before": ["v"], "settle": 0.1},
        {"name": "also-java", "image": "java", "before": ["never"]},
    ]
    proc = await front_process(
        quiesce=rules, console_before=["node-before"], console_after=["node-after"]
    )
    servers = {
        "java": (JAVA_IMAGE, JAVA_STARTUP),
        "both": (JAVA_IMAGE, "java -jar paper.jar"),
        "valheim": ("ghcr.io/parkervcp/yolks:debian", "./valheim_server.x86_64 -nographics"),
        "node": ("ghcr.io/parkervcp/yolks:debian", "./srcds_run -game csgo"),
    }
    made = {}
    for label, (image, invocation) in servers.items():
        server = node.server()
        wings.server(server, state="running", image=image, invocation=invocation)
        backup = new_uuid()
        assert await proc.post_backup(server, backup) == 202
        assert (await panel.wait_report(backup, timeout=30)).json["successful"] is True
        made[label] = wings.servers[server].commands
    assert made == {
        "java": ["java-b", "java-a"],
        "both": ["both"],  # first match wins; a rule's keys, no node-wide ones added
        "valheim": ["v"],
        "node": ["node-before", "node-after"],
    }
    done = log_events(proc, "backup_completed")
    assert {e["quiesce_rule"] for e in done if "quiesce_rule" in e} == {"both", "java", "valheim"}


# -- when the after commands go ---------------------------------------------------------------


async def test_after_commands_go_as_soon_as_the_files_are_read(
    front_process, node: Node, panel: Panel, wings: WingsStandin
):
    """The panel's pre-signed flow uploads after the archive is written: save-on goes when
    the files have been read, not when the upload ends. The panel refuses the part URLs
    (and so holds the upload) until the game has heard save-on."""
    proc = await front_process(
        quiesce=shipped_rules(), report_retry_initial=1.0, report_retry_max=16.0
    )
    server = node.server()
    game = start_game(wings, server, image=JAVA_IMAGE, invocation=JAVA_STARTUP)
    panel.status = 503
    backup = new_uuid()
    panel.register(server, backup, disk="s3")
    assert await proc.post_backup(server, backup, adapter="s3") == 202
    await wait_until(
        lambda: "save-on" in wings.servers[server].commands, "save-on before the upload", 30
    )
    assert panel.reports(backup) == []  # the upload has not ended: no part URL was given
    panel.status = 204
    report = await panel.wait_report(backup, timeout=60)
    assert report.json["successful"] is True, proc.logs()
    assert game.saved is not None
    assert wings.servers[server].commands == ["save-off", "save-all flush", "save-on"]


async def test_after_commands_go_when_the_backup_fails(
    front_process, node: Node, panel: Panel, wings: WingsStandin
):
    """A rule's after commands go also when the backup fails before its files are read (a
    .pteroignore larger than is read fails it), and the pause is still measured."""
    proc = await front_process(quiesce=shipped_rules())
    server = node.server({".pteroignore": "# x\n" * (1024 * 1024)})
    start_game(wings, server, image=JAVA_IMAGE, invocation=JAVA_STARTUP)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is False
    [failed] = log_events(proc, "backup_failed")
    assert ".pteroignore" in failed["error"]
    assert wings.servers[server].commands == ["save-off", "save-all flush", "save-on"]
    [resumed] = log_events(proc, "saving_resumed")
    assert resumed["message"].startswith("saving paused for ")


async def test_after_commands_go_when_the_daemon_stops_during_the_wait(
    front_process, node: Node, panel: Panel, wings: WingsStandin
):
    """SIGTERM while the daemon waits for the game's line: saving is turned back on."""
    proc = await front_process(**SAVE, console_wait_timeout=60, shutdown_grace=0.2)
    server = node.server()
    start_game(wings, server, prints=False)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    await wait_until(lambda: "save-all flush" in wings.servers[server].commands, "the before")
    assert await proc.stop() == 0
    assert wings.servers[server].commands == ["save-off", "save-all flush", "save-on"]
    assert (await panel.wait_report(backup)).json["successful"] is False


async def test_saving_is_turned_back_on_after_a_kill_9_during_the_pause(
    front_process, node: Node, panel: Panel, wings: WingsStandin
):
    """Killed while the game's saving is paused: at the next start the server of the
    interrupted backup gets its after commands (and the panel hears the backup failed)."""
    proc = await front_process(**SAVE, console_wait_timeout=60)
    server = node.server()
    start_game(wings, server, prints=False)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    await wait_until(lambda: "save-all flush" in wings.servers[server].commands, "the before")
    await proc.stop(signal.SIGKILL)
    assert wings.servers[server].commands == ["save-off", "save-all flush"]
    await proc.start()
    assert (await panel.wait_report(backup, timeout=30)).json["successful"] is False
    await wait_until(lambda: "save-on" in wings.servers[server].commands, "save-on at start")
    assert wings.servers[server].commands == ["save-off", "save-all flush", "save-on"]


# -- the clone, on a file system that clones ----------------------------------------------


@pytest.fixture
def xfs_node(node: Node, tmp_path: Path) -> Iterator[Node]:
    """The node's system.data on a loop-mounted XFS image."""
    with mounted_xfs(tmp_path / "xfs.img", node.data):
        yield node


async def test_clone_on_xfs_resumes_saving_before_the_read(
    front_process, xfs_node: Node, panel: Panel, wings: WingsStandin
):
    """On XFS the tree is cloned while saving is paused and save-on goes at once: the game
    writes again while the archive is read, and the archive still equals the files as
    saved (it reads the clone, which is removed afterwards)."""
    node = xfs_node
    # Slow enough that the game is writing again while the clone is read.
    proc = await front_process(quiesce=shipped_rules(), write_limit=1, compression_level="none")
    server = node.server({"world/level.dat": bytes(range(256)) * 4096})
    game = start_game(wings, server, image=JAVA_IMAGE, invocation=JAVA_STARTUP)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    await wait_until(lambda: log_events(proc, "saving_resumed"), "saving to resume", 60)
    generation = game.generation
    await wait_until(lambda: game.generation > generation + 1, "the game to write again")
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    [made] = log_events(proc, "clone_made")
    [resumed] = log_events(proc, "saving_resumed")
    [done] = log_events(proc, "backup_completed")
    assert resumed["cloned"] is True and done["cloned"] is True
    # Saving resumed before the archive was read: the game has written since.
    assert game.saved is not None and region_files(game.files_now()) != game.saved
    files = archived(node.archive(server, backup))
    assert region_files(files) == game.saved
    assert files["world/level.dat"] == bytes(range(256)) * 4096
    assert clones(node.data) == []
    assert made["backup"] == backup


async def test_clone_left_by_kill_9_is_removed_at_the_next_start(
    front_process, xfs_node: Node, panel: Panel, wings: WingsStandin
):
    node = xfs_node
    proc = await front_process(quiesce=shipped_rules(), write_limit=1, compression_level="none")
    server = node.random_server(8 * 1024 * 1024, files=4)
    start_game(wings, server, image=JAVA_IMAGE, invocation=JAVA_STARTUP)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    await wait_until(lambda: log_events(proc, "clone_made"), "the clone", 60)
    assert clones(node.data) == [f".wingsbak-clone-{backup}"]
    await proc.stop(signal.SIGKILL)
    await proc.start()
    assert (await panel.wait_report(backup, timeout=30)).json["successful"] is False
    assert clones(node.data) == []
    [removed] = log_events(proc, "interrupted_backup_clones_removed")
    assert removed["clones"] == [f".wingsbak-clone-{backup}"]


async def test_no_clone_when_cloning_is_off(
    front_process, xfs_node: Node, panel: Panel, wings: WingsStandin
):
    node = xfs_node
    proc = await front_process(quiesce=shipped_rules(), clone_files=False)
    server = node.server()
    game = start_game(wings, server, image=JAVA_IMAGE, invocation=JAVA_STARTUP)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert (await panel.wait_report(backup, timeout=60)).json["successful"] is True
    assert not log_events(proc, "clone_made")
    assert region_files(archived(node.archive(server, backup))) == game.saved


def test_archived_reads_what_tar_wrote(tmp_path: Path):
    """The helper above, against the real tar."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 10)
    out = tmp_path / "a.tar.gz"
    subprocess.run(["tar", "-czf", str(out), "-C", str(tmp_path / "d"), "a"], check=True)
    assert archived(out) == {"a": b"x" * 10}
