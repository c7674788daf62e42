"""``wingsbak archive`` as a user runs it: a child process, one JSON line, clean errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import gnu_tar_names, gzip_test

KEYS = {"path", "size", "checksum", "checksum_type", "files", "skipped", "seconds"}


def wingsbak(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wingsbak", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,  # type: ignore[arg-type]
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("wingsbak: ")
    assert "Traceback" not in proc.stderr


def make_src(root: Path) -> Path:
    root.mkdir()
    (root / "world").mkdir()
    (root / "world" / "level.dat").write_bytes(os.urandom(10_000))
    (root / "server.log").write_text("log\n")
    (root / "keep.log").write_text("keep\n")
    (root / "cache").mkdir()
    (root / "cache" / "x").write_text("x")
    (root / ".pteroignore").write_text("*.log\n")
    return root


@pytest.mark.parametrize("checksum", ["sha1", "sha256"])
def test_archive_prints_one_json_line(tmp_path: Path, checksum: str) -> None:
    src = make_src(tmp_path / "src")
    out = tmp_path / "out.tar.gz"
    proc = wingsbak(
        "archive",
        str(src),
        "-o",
        str(out),
        "--ignore",
        "!keep.log",
        "--ignore",
        "cache/",
        "--level",
        "best_compression",
        "--write-limit",
        "500",
        "--checksum",
        checksum,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert set(report) == KEYS
    assert report["path"] == str(out.absolute())
    assert report["size"] == out.stat().st_size
    assert report["checksum"] == hashlib.new(checksum, out.read_bytes()).hexdigest()
    assert report["checksum_type"] == checksum
    assert isinstance(report["seconds"], int | float) and report["seconds"] >= 0
    names = sorted(n.decode() for n in gnu_tar_names(out))
    assert names == [".pteroignore", "keep.log", "world/", "world/level.dat"]
    assert report["files"] == len(names)
    gzip_test(out)
    subprocess.run([f"{checksum}sum", "-c", f"{out.name}.{checksum}"], cwd=tmp_path, check=True)


def test_ignore_file_option(tmp_path: Path) -> None:
    src = make_src(tmp_path / "src")
    ignore = tmp_path / "ignore.txt"
    ignore.write_text("# request lines\nworld/\n")
    out = tmp_path / "out.tar.gz"
    proc = wingsbak("archive", str(src), "-o", str(out), "--ignore-file", str(ignore))
    assert proc.returncode == 0, proc.stderr
    assert sorted(gnu_tar_names(out)) == [b".pteroignore", b"cache/", b"cache/x"]


def test_missing_source(tmp_path: Path) -> None:
    proc = wingsbak("archive", str(tmp_path / "nope"), "-o", str(tmp_path / "out.tar.gz"))
    assert_clean_error(proc)
    assert "nope" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_ignore_file(tmp_path: Path) -> None:
    src = make_src(tmp_path / "src")
    out = tmp_path / "out.tar.gz"
    proc = wingsbak("archive", str(src), "-o", str(out), "--ignore-file", str(tmp_path / "nope"))
    assert_clean_error(proc)
    assert not out.exists()


def test_output_directory_missing(tmp_path: Path) -> None:
    src = make_src(tmp_path / "src")
    proc = wingsbak("archive", str(src), "-o", str(tmp_path / "no" / "such" / "out.tar.gz"))
    assert_clean_error(proc)
    assert not (tmp_path / "no").exists()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that an unprivileged child can reach."""
    path = Path(tempfile.mkdtemp(prefix="wingsbak-cli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


# Running as root, a read-only directory is still writable; so the CLI runs in a child that
# drops to "nobody" after the interpreter has started (it lives under /root), then calls main.
_AS_NOBODY = """
import os, sys
import wingsbak.archive, wingsbak.cli, wingsbak.log, wingsbak.archive.rules
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
sys.exit(wingsbak.cli.main(sys.argv[1:]))
"""


def test_unwritable_output_directory(shared_dir: Path) -> None:
    src = make_src(shared_dir / "src")
    for dirpath, _, filenames in os.walk(src):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    out_dir = shared_dir / "readonly"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    proc = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, "archive", str(src), "-o", str(out_dir / "b.tar.gz")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert_clean_error(proc)
    assert "Permission denied" in proc.stderr
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["self.tar.gz", "b[1] *.tar.gz"])
def test_an_archive_written_inside_its_source_does_not_contain_itself(
    tmp_path: Path, name: str
) -> None:
    src = make_src(tmp_path / "src")
    (src / "backups").mkdir()
    (src / "backups" / "older.tar.gz").write_bytes(b"an older backup")
    out = src / "backups" / name
    proc = wingsbak("archive", str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    names = gnu_tar_names(out.read_bytes())
    assert b"backups/older.tar.gz" in names and b"world/level.dat" in names
    assert not [n for n in names if n.startswith(b"backups/") and name.encode() in n]
    assert not [n for n in names if n.endswith(b".part")], names
