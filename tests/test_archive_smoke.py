import subprocess
import tarfile
from pathlib import Path

from wingsbak.archive import IgnoreRules, archive_to_file


def test_archive_round_trips_through_gnu_tar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "x.txt").write_text("hello")
    (src / "empty").mkdir()
    (src / "drop.log").write_text("log")
    out = tmp_path / "out.tar.gz"
    result = archive_to_file(src, out, IgnoreRules(["*.log"]))
    names = subprocess.run(
        ["tar", "-tzf", str(out)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert sorted(names) == ["a/", "a/b/", "a/b/x.txt", "empty/"]
    subprocess.run(["gzip", "-t", str(out)], check=True)
    subprocess.run(["sha1sum", "-c", out.name + ".sha1"], cwd=tmp_path, check=True)
    assert result.size == out.stat().st_size
    with tarfile.open(out) as t:
        assert t.extractfile("a/b/x.txt").read() == b"hello"  # type: ignore[union-attr]
