"""Restore speed: ``wingsbak restore`` against GNU ``tar -xzf`` on the same archive, one run.

    python -m bench.restore [--size 500M] [--runs 3] [--sync]

The archive is made once by ``wingsbak archive`` from the bench data set (bench/dataset.py,
a game-server-like tree) and reused. Each run extracts into a fresh directory on the same disk
as the data set; the order of the tools alternates between runs so neither always inherits the
other's dirty page cache. Prints best and median seconds, MB/s of file data, and the ratio
wingsbak/tar (the goal is <= 1.0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.dataset import DEFAULT_SIZE, build_dataset, parse_size, tree_bytes

MB = 1000 * 1000
WORK = Path(__file__).resolve().parent / ".data" / "restore"


def wingsbak_bin() -> str:
    candidate = Path(sys.executable).with_name("wingsbak")
    return str(candidate) if candidate.exists() else shutil.which("wingsbak") or "wingsbak"


def make_archive(tree: Path, archive: Path) -> None:
    stamp = tree.with_name(tree.name + ".complete")
    if archive.exists() and stamp.exists() and archive.stat().st_mtime > stamp.stat().st_mtime:
        return
    archive.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([wingsbak_bin(), "archive", str(tree), "-o", str(archive)], check=True)


def timed(argv: list[str], sync: bool) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    if sync:
        os.sync()
    return time.perf_counter() - start


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.sync()  # the previous run's dirty pages must not be flushed inside the next timing
    return path


def verify(a: Path, b: Path) -> None:
    """Both tools produced the same tree (content, symlinks; diff does not follow links)."""
    proc = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"restored trees differ:\n{proc.stdout.decode()[:2000]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="include a final sync in each time")
    args = parser.parse_args(argv)

    tree = build_dataset(total_bytes=args.size)
    data, entries = tree_bytes(tree)
    archive = WORK / f"{tree.name}.tar.gz"
    make_archive(tree, archive)
    subprocess.run(["cat", str(archive)], check=True, stdout=subprocess.DEVNULL)  # warm cache
    print(
        f"data set {tree}: {data / MB:.0f} MB in {entries} entries; "
        f"archive {archive.stat().st_size / MB:.0f} MB"
    )

    tools = {
        "wingsbak restore": [wingsbak_bin(), "restore", str(archive), "{dest}"],
        "tar -xzf": ["tar", "-xzf", str(archive), "-C", "{dest}"],
    }
    times: dict[str, list[float]] = {name: [] for name in tools}
    names = list(tools)
    for i in range(args.runs):
        for name in names if i % 2 == 0 else names[::-1]:
            dest = fresh(WORK / ("out-" + name.split()[0]))
            argv_ = [a.replace("{dest}", str(dest)) for a in tools[name]]
            times[name].append(timed(argv_, args.sync))
        if i == 0:
            verify(WORK / "out-tar", WORK / "out-wingsbak")

    print(f"{'tool':<18}{'best s':>9}{'median s':>10}{'MB/s':>8}")
    for name, ts in times.items():
        best = min(ts)
        print(f"{name:<18}{best:>9.2f}{statistics.median(ts):>10.2f}{data / MB / best:>8.0f}")
    ours, tar = times["wingsbak restore"], times["tar -xzf"]
    print(
        f"ratio wingsbak/tar: best {min(ours) / min(tar):.2f}x, "
        f"median {statistics.median(ours) / statistics.median(tar):.2f}x (goal <= 1.0x)"
    )
    for name in names:
        shutil.rmtree(WORK / ("out-" + name.split()[0]), ignore_errors=True)


if __name__ == "__main__":
    main()
