"""Entries a backup cannot read (a chmod 000 directory or file, to a process without root's
override) fail it, unless leaving them out is allowed; FIFOs, sockets and devices are left out
by design and never fail it. The engine runs in a real child process without that override."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import gnu_tar_names
from test_engine_cli import assert_clean_error

from tests.support.daemon_helpers import WITHOUT_DAC_OVERRIDE


def archive_unprivileged(src: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    archive = [sys.executable, "-m", "wingsbak", "archive", str(src), "-o", str(out), *flags]
    return subprocess.run(
        [*WITHOUT_DAC_OVERRIDE, *archive],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def locked_tree(tmp_path: Path) -> Iterator[Path]:
    src = tmp_path / "src"
    (src / "world").mkdir(parents=True)
    (src / "world" / "level.dat").write_bytes(b"level")
    (src / "locked").mkdir()
    (src / "locked" / "inside.txt").write_text("inside")
    (src / "secret.txt").write_text("secret")
    os.mkfifo(src / "pipe")
    (src / "locked").chmod(0o000)
    (src / "secret.txt").chmod(0o000)
    yield src
    (src / "locked").chmod(0o755)


def test_an_unreadable_entry_fails_the_backup(locked_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar.gz"
    proc = archive_unprivileged(locked_tree, out)
    # The FIFO's warning (a JSON log line) may come first; the error is the last line.
    last = proc.stderr.strip().splitlines()[-1]
    assert_clean_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", last))
    assert proc.stdout == ""
    assert "Permission denied" in last
    assert "'locked'" in last or "'secret.txt'" in last
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no temporary left


def test_allowed_the_rest_is_archived_and_counted(locked_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar.gz"
    proc = archive_unprivileged(locked_tree, out, "--allow-skipped")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["skipped"] == 2  # locked/ and secret.txt; the FIFO is not counted
    names = {n.decode().rstrip("/") for n in gnu_tar_names(out)}
    assert names == {"world", "world/level.dat"}
    assert "archive_entry_skipped" in proc.stderr


def test_fifos_alone_never_fail_a_backup(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    os.mkfifo(src / "pipe")
    out = tmp_path / "out.tar.gz"
    proc = archive_unprivileged(src, out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped"] == 0
    assert gnu_tar_names(out) == [b"a.txt"]
