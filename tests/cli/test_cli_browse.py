"""``wingsbak ls``, ``wingsbak cat`` and ``wingsbak restore --only`` (issue 21), run as the
operator runs them, on archives the real archiver writes; a backup found by its path or by
its uuid in the configured stores, as ``wingsbak verify`` finds one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml


def wingsbak(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "wingsbak", *args], capture_output=True, timeout=120, cwd=cwd
    )


def node(tmp_path: Path) -> tuple[Path, str]:
    """A backup directory holding one archive of a server (Pelican's layout), a config
    naming it; returns the config and the backup uuid."""
    src = tmp_path / "src"
    (src / "world").mkdir(parents=True)
    (src / "world/level.dat").write_bytes(b"level")
    (src / "server.properties").write_text("motd=hi\n")
    os.symlink("/etc/passwd", src / "passwd-link")
    server, backup = str(uuid.uuid4()), str(uuid.uuid4())
    (tmp_path / "backups" / server).mkdir(parents=True)
    archive = tmp_path / "backups" / server / f"{backup}.tar.gz"
    assert wingsbak("archive", str(src), "-o", str(archive), cwd=tmp_path).returncode == 0
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "uuid": str(uuid.uuid4()),
                "token": "t",
                "system": {
                    "data": str(tmp_path / "data"),
                    "backup_directory": str(tmp_path / "backups"),
                },
            }
        )
    )
    return config, backup


def test_ls_and_cat_by_uuid_and_by_path(tmp_path: Path) -> None:
    config, backup = node(tmp_path)
    listed = wingsbak("ls", backup, "--config", str(config), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert [line.split()[-1] for line in lines] == ["/etc/passwd", "server.properties", "world/"]
    assert lines[0].startswith("Lrwxrwxrwx") and "passwd-link -> /etc/passwd" in lines[0]
    archive = next((tmp_path / "backups").glob("*/*.tar.gz"))
    inner = wingsbak("ls", str(archive), "world", cwd=tmp_path)
    assert inner.stdout.decode().split()[-1] == "world/level.dat"
    cat = wingsbak("cat", backup, "world/level.dat", "--config", str(config), cwd=tmp_path)
    assert (cat.returncode, cat.stdout) == (0, b"level")
    link = wingsbak("cat", str(archive), "passwd-link", cwd=tmp_path)
    assert link.returncode == 1 and link.stdout == b""  # never followed
    missing = wingsbak("cat", str(archive), "../../etc/passwd", cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.startswith(b"wingsbak: ")
    unknown = wingsbak("ls", str(uuid.uuid4()), "--config", str(config), cwd=tmp_path)
    assert unknown.returncode == 1 and b"no backup" in unknown.stderr


def test_restore_only_restores_the_paths_named(tmp_path: Path) -> None:
    config, backup = node(tmp_path)
    dest = tmp_path / "dest"
    (dest / "world").mkdir(parents=True)
    (dest / "world/level.dat").write_bytes(b"griefed")
    (dest / "world/extra").write_bytes(b"since")
    (dest / "server.properties").write_text("motd=live\n")
    done = wingsbak(
        "restore",
        backup,
        str(dest),
        "--only",
        "world",
        "passwd-link",
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (dest / "world/level.dat").read_bytes() == b"level"
    assert not (dest / "world/extra").exists()  # the folder is the backup's
    assert os.readlink(dest / "passwd-link") == "/etc/passwd"
    assert (dest / "server.properties").read_text() == "motd=live\n"  # not named: untouched
    assert sorted(os.listdir(dest)) == ["passwd-link", "server.properties", "world"]


def killed_after_the_swap(
    tmp_path: Path, config: Path, backup: str
) -> tuple[Path, subprocess.CompletedProcess[bytes]]:
    """``restore --only world`` over a live ``world``, SIGKILLed after the folders' swap
    (the old one under a hidden name then)."""
    dest = tmp_path / "dest"
    (dest / "world").mkdir(parents=True)
    (dest / "world/level.dat").write_bytes(b"griefed")
    killed = subprocess.run(
        [sys.executable, "-m", "wingsbak", "restore", backup, str(dest), "--only", "world",
         "--config", str(config)],
        capture_output=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "WINGSBAK_FAILPOINT": "browse-restore-swapped:kill"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return dest, killed


async def start_next(
    next_start: str, tmp_path: Path, config: Path, backup: str, start_daemon: Any
) -> None:
    """The next ``restore --only`` (of another path) or the daemon's next start."""
    if next_start == "command line":
        again = wingsbak("restore", backup, str(tmp_path / "dest"), "--only",
                         "server.properties", "--config", str(config), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
    else:
        backups = str(tmp_path / "backups")
        await start_daemon(config_hook=lambda raw: raw["system"].update(backup_directory=backups))


@pytest.mark.parametrize("next_start", ["command line", "daemon"])
async def test_a_restore_only_killed_midway_is_finished_by_the_next_start(
    tmp_path: Path, next_start: str, start_daemon: Any
) -> None:
    """``restore --only world`` killed between the swap of the folder and the removal of the
    old one (which sits under a hidden name then): the next ``restore --only`` or the
    daemon's next start removes it, from the run's record beside the daemon's; the live
    folder is the backup's."""
    config, backup = node(tmp_path)
    dest, _killed = killed_after_the_swap(tmp_path, config, backup)
    hidden = [p for p in os.listdir(dest) if p.startswith(".wingsbak-part-")]
    assert len(hidden) == 1 and (dest / hidden[0] / "level.dat").read_bytes() == b"griefed"
    records = list((tmp_path / "backups").glob(".wingsbak-browse-restores-*.json"))
    assert len(records) == 1

    await start_next(next_start, tmp_path, config, backup, start_daemon)
    assert sorted(os.listdir(dest)) == (
        ["server.properties", "world"] if next_start == "command line" else ["world"]
    )
    assert (dest / "world/level.dat").read_bytes() == b"level"
    assert list((tmp_path / "backups").glob(".wingsbak-browse-restores-*.json")) == []


@pytest.mark.parametrize("next_start", ["command line", "daemon"])
async def test_records_no_run_could_have_left_stop_neither_start(
    tmp_path: Path, next_start: str, start_daemon: Any
) -> None:
    """Beside a real run's record, one named with a number no process can have (``os.kill``
    raises OverflowError for it) and a folder named as a gone run's record (it cannot be
    read nor rewritten): both are logged and passed over, the command line still keeps its
    own record and the next start still finishes the killed run."""
    config, backup = node(tmp_path)
    backups = tmp_path / "backups"
    (backups / ".wingsbak-browse-restores-99999999999.json").write_text("{}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (backups / f".wingsbak-browse-restores-{dead.pid}.json").mkdir()
    dest, killed = killed_after_the_swap(tmp_path, config, backup)
    assert b"cannot be written" not in killed.stderr  # it kept its record
    assert len([p for p in os.listdir(dest) if p.startswith(".wingsbak-part-")]) == 1

    await start_next(next_start, tmp_path, config, backup, start_daemon)
    assert not [p for p in os.listdir(dest) if p.startswith(".wingsbak-part-")]
    assert (dest / "world/level.dat").read_bytes() == b"level"
    assert (backups / f".wingsbak-browse-restores-{dead.pid}.json").is_dir()  # not ours to remove


def test_a_killed_runs_record_is_finished_by_a_run_that_has_its_pid_again(
    tmp_path: Path,
) -> None:
    """Process ids come round again: the next run may have the id of the run that was
    killed. Its record is then a dead run's all the same (a run writes its own only after
    the look), and is finished; passed over, it was overwritten with the new run's empty one
    and the killed run's hidden folder stayed for good."""
    config, backup = node(tmp_path)
    backups = tmp_path / "backups"
    dest, _killed = killed_after_the_swap(tmp_path, config, backup)
    (record,) = backups.glob(".wingsbak-browse-restores-*.json")
    assert len([p for p in os.listdir(dest) if p.startswith(".wingsbak-part-")]) == 1
    # The shell's pid is the next run's (exec keeps it): the killed run's record takes it.
    again = subprocess.run(
        ["sh", "-c", f'mv "$1" "$2/.wingsbak-browse-restores-$$.json" && exec "$3" -m wingsbak '
         f'restore {backup} "$4" --only server.properties --config "$5"',
         "sh", str(record), str(backups), sys.executable, str(dest), str(config)],
        capture_output=True, timeout=120, cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert sorted(os.listdir(dest)) == ["server.properties", "world"]
    assert (dest / "world/level.dat").read_bytes() == b"level"
    assert list(backups.glob(".wingsbak-browse-restores-*.json")) == []
