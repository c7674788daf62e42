"""Verification speed: ``wingsbak verify ARCHIVE`` against ``gzip -t`` on the same file, in
one run.

    python -m bench.verify [--size 500M] [--runs 5] [--level best_speed]

The archive is made once by ``wingsbak archive`` from the bench data set (bench/dataset.py)
and reused; its page cache is warmed first, so both tools read from memory and the figure is
their CPU work (on a node the disk or ``verify_read_limit`` bounds both). The two commands
alternate, each timed as a whole process (start-up included), and the ratio is taken run by
run: speed = gzip's time / wingsbak's time (the target: at least 0.8). wingsbak does more per
byte than ``gzip -t``: it also hashes the compressed bytes against the sidecar and walks every
tar header; ``gzip -t`` only inflates and checks the CRC.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.dataset import DEFAULT_SIZE, build_dataset, parse_size, tree_bytes

MB = 1000 * 1000
TARGET = 0.8
WORK = Path(__file__).resolve().parent / ".data" / "verify"


def wingsbak_bin() -> str:
    candidate = Path(sys.executable).with_name("wingsbak")
    return str(candidate) if candidate.exists() else shutil.which("wingsbak") or "wingsbak"


def make_archive(tree: Path, archive: Path, level: str) -> None:
    stamp = tree.with_name(tree.name + ".complete")
    if archive.exists() and stamp.exists() and archive.stat().st_mtime > stamp.stat().st_mtime:
        return
    archive.parent.mkdir(parents=True, exist_ok=True)
    argv = [wingsbak_bin(), "archive", str(tree), "-o", str(archive), "--level", level]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()[:500]}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--level", default="best_speed")
    args = parser.parse_args(argv)

    tree = build_dataset(total_bytes=args.size)
    data, entries = tree_bytes(tree)
    archive = WORK / f"{tree.name}-{args.level}.tar.gz"
    make_archive(tree, archive, args.level)
    subprocess.run(["cat", str(archive)], check=True, stdout=subprocess.DEVNULL)
    packed = archive.stat().st_size
    print(
        f"data set {tree.name}: {data / MB:.0f} MB in {entries} entries; "
        f"archive {packed / MB:.0f} MB ({args.level}), with its sha1 sidecar"
    )
    tools = {
        "wingsbak verify": [wingsbak_bin(), "verify", str(archive)],
        "gzip -t": ["gzip", "-t", str(archive)],
    }
    times: dict[str, list[float]] = {name: [] for name in tools}
    names = list(tools)
    for i in range(args.runs):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(timed(tools[name]))
    print(f"{'tool':<17}{'best s':>8}{'median s':>10}{'MB/s packed':>13}")
    for name, ts in times.items():
        best = min(ts)
        print(f"{name:<17}{best:>8.2f}{statistics.median(ts):>10.2f}{packed / MB / best:>13.0f}")
    ratios = [g / w for g, w in zip(times["gzip -t"], times["wingsbak verify"], strict=True)]
    median = statistics.median(ratios)
    print(
        f"speed wingsbak/gzip -t, run by run: min {min(ratios):.2f}x, median {median:.2f}x, "
        f"max {max(ratios):.2f}x"
    )
    print(f"{'PASS' if median >= TARGET else 'FAIL'}: median {median:.2f}x (target >= {TARGET}x)")


if __name__ == "__main__":
    main()
