"""Running out of file descriptors fails the backup; it never leaves files out of a backup
reported as successful. The daemon lifts its own soft limit at start."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from engine_helpers import gnu_tar_names
from test_engine_cli import assert_clean_error, wingsbak

DEPTH = 120  # levels: two descriptors each for the deepest MAX_OPEN_LEVELS (32) of them
OPEN_FILES = 32  # fewer than those 64


def deep_tree(root: Path) -> Path:
    d = root
    for i in range(DEPTH):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    (d / "world.dat").write_bytes(b"the deepest file")
    (root / "top.txt").write_text("top")
    return d / "world.dat"


def with_open_files_limit(limit: int) -> object:
    def set_limit() -> None:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )

    return set_limit


def test_a_walk_that_runs_out_of_descriptors_fails_instead_of_skipping(tmp_path: Path) -> None:
    deepest = deep_tree(tmp_path / "src")
    out = tmp_path / "out.tar.gz"
    limit = with_open_files_limit(OPEN_FILES)
    proc = wingsbak("archive", str(tmp_path / "src"), "-o", str(out), preexec_fn=limit)
    assert_clean_error(proc)
    assert "Too many open files" in proc.stderr
    assert not out.exists()
    assert list(tmp_path.glob("*.part")) == list(tmp_path.glob(".out*")) == []

    # With descriptors enough, the same tree is archived whole.
    proc = wingsbak("archive", str(tmp_path / "src"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(deepest.relative_to(tmp_path / "src")).encode() in gnu_tar_names(out.read_bytes())


def test_the_daemon_lifts_its_soft_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = (
        "import resource\n"
        "from wingsbak.daemon import raise_open_files_limit\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=with_open_files_limit(256),
        check=True,
    )
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    assert proc.stdout.split() == [str(wanted), str(wanted)]
    assert soft > 0
