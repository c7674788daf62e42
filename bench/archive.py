"""Time ``wingsbak archive`` against ``tar | gzip -1`` and ``tar | pigz -1`` on one data set.

    python -m bench.archive [--size 500M] [--runs 3]     # speed, size and peak RSS
    python -m bench.archive --memory                      # peak RSS at 0.5 GB and at 2 GB

All tools read the same warm page cache and write to the same disk, and every run ends with
its archive durable there (wingsbak fsyncs before its rename; each peer is followed by
``sync FILE``). Runs alternate between the tools and the median is reported, so drift on the
machine hits all of them alike. Peak RSS is the child's own ``ru_maxrss`` from ``wait4``; the
CPU seconds (user + system, all threads and children) are printed too, since on a shared
machine they move less than wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.dataset import DATA_DIR, DEFAULT_SIZE, MB, SMALL_TREE, build_dataset, parse_size

MIB = 1024 * 1024
OUT_DIR = DATA_DIR / "out"
CORES = os.cpu_count() or 1


@dataclass(slots=True)
class Run:
    seconds: float
    size: int
    maxrss: int  # bytes
    cpu: float  # user + system seconds of the child and its children


@dataclass(slots=True)
class Tool:
    name: str
    argv: list[str]  # with {src} and {out} placeholders

    def command(self, src: Path, out: Path) -> list[str]:
        return [a.format(src=src, out=out) for a in self.argv]


def wingsbak_bin() -> str:
    # The wingsbak of the interpreter running this script (the project's venv).
    candidate = Path(sys.executable).with_name("wingsbak")
    return str(candidate) if candidate.exists() else shutil.which("wingsbak") or "wingsbak"


def tools(level: str) -> list[Tool]:
    gz = "-1" if level == "best_speed" else "-9"
    return [
        Tool("wingsbak", [wingsbak_bin(), "archive", "{src}", "-o", "{out}", "--level", level]),
        Tool(
            f"tar|pigz {gz} -p {CORES}",
            [
                "sh",
                "-c",
                f"tar -cf - -C {{src}} . | pigz {gz} -p {CORES} > {{out}} && sync {{out}}",
            ],
        ),
        Tool(
            f"tar|gzip {gz}",
            ["sh", "-c", f"tar -cf - -C {{src}} . | gzip {gz} > {{out}} && sync {{out}}"],
        ),
    ]


def run_once(argv: list[str], out: Path) -> Run:
    for stale in (out, out.with_name(out.name + ".sha1")):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    # wait4 gives this child's own resource usage (ru_maxrss in KiB on Linux), unlike
    # RUSAGE_CHILDREN, which is the maximum over every child reaped so far.
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}: {argv}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(seconds, out.stat().st_size, usage.ru_maxrss * 1024, cpu)


def warm(src: Path) -> None:
    """Read every file once so all tools start from the same warm page cache. (GNU tar does
    not read file data when its output is /dev/null, hence the pipe.) A data set generated
    just now is still being written back; ``sync`` first, so the first run does not compete
    with that."""
    os.sync()
    subprocess.run(f"tar -cf - -C {src} . | cat > /dev/null", shell=True, check=True)


def tree_bytes(src: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(src):
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def verify(archive: Path, src: Path) -> None:
    """The archive is valid gzip and lists as many entries as the tree has."""
    subprocess.run(["gzip", "-t", str(archive)], check=True)
    listed = subprocess.run(
        ["tar", "-tzf", str(archive)], check=True, capture_output=True
    ).stdout.count(b"\n")
    entries = sum(len(d) + len(f) for _, d, f in os.walk(src))
    if listed != entries:
        raise SystemExit(f"{archive}: tar lists {listed} entries, the tree has {entries}")


def measure(src: Path, tool_list: list[Tool], runs: int, tag: str) -> dict[str, list[Run]]:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Run]] = {t.name: [] for t in tool_list}
    for i in range(runs):
        # Rotate the order too, so no tool always runs right after the same one.
        order = tool_list[i % len(tool_list) :] + tool_list[: i % len(tool_list)]
        for tool in order:
            out = OUT_DIR / f"{tag}-{tool.name.split()[0].replace('|', '-')}.tar.gz"
            results[tool.name].append(run_once(tool.command(src, out), out))
    return results


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.seconds for r in runs),
        runs[-1].size,
        max(r.maxrss for r in runs),
        statistics.median(r.cpu for r in runs),
    )


def print_table(title: str, input_bytes: int, results: dict[str, list[Run]]) -> None:
    med = {name: median_run(runs) for name, runs in results.items()}
    names = list(med)
    ours = med[names[0]]
    print(f"\n{title}: {input_bytes / MB:.0f} MB of file data, median of {len(results[names[0]])}")
    print(
        f"{'tool':<18} {'seconds':>8} {'MB/s':>8} {'cpu s':>6} {'output MB':>10} {'ratio':>6}"
        "  runs (s)"
    )
    for name in names:
        m = med[name]
        runs = " ".join(f"{r.seconds:.2f}" for r in results[name])
        print(
            f"{name:<18} {m.seconds:8.2f} {input_bytes / MB / m.seconds:8.0f} {m.cpu:6.2f} "
            f"{m.size / MB:10.1f} {m.size / input_bytes:6.3f}  {runs}"
        )
    for name in names[1:]:
        m = med[name]
        print(
            f"{name} time / wingsbak time = {m.seconds / ours.seconds:.2f}x;  "
            f"wingsbak size / {name} size = {ours.size / m.size:.4f}"
        )
    print(f"wingsbak peak RSS: {ours.maxrss / MIB:.1f} MiB")


def speed(size: int, runs: int, level: str) -> None:
    src = build_dataset(total_bytes=size)
    warm(src)
    input_bytes = tree_bytes(src)
    all_tools = tools(level)
    results = measure(src, all_tools, runs, "full")
    print_table(f"{src.name} at {level}", input_bytes, results)
    verify(OUT_DIR / "full-wingsbak.tar.gz", src)

    # Per-file overhead decides trees of many small files: the same comparison on that tree.
    small = src / SMALL_TREE
    small_tools = [all_tools[0], all_tools[1]]
    small_results = measure(small, small_tools, runs, "small")
    print_table(f"{SMALL_TREE} only", tree_bytes(small), small_results)
    verify(OUT_DIR / "small-wingsbak.tar.gz", small)


def memory(level: str) -> None:
    peaks = []
    wingsbak = tools(level)[0]
    for size in (500 * MB, 2000 * MB):
        src = build_dataset(total_bytes=size)
        warm(src)
        out = OUT_DIR / "memory-wingsbak.tar.gz"
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        runs = [run_once(wingsbak.command(src, out), out) for _ in range(2)]
        peak = max(r.maxrss for r in runs)
        peaks.append(peak)
        secs = min(r.seconds for r in runs)
        print(
            f"{src.name}: peak RSS {peak / MIB:.1f} MiB, {secs:.2f} s, "
            f"output {runs[-1].size / MB:.0f} MB"
        )
        out.unlink(missing_ok=True)
    ratio = peaks[1] / peaks[0]
    ok = abs(ratio - 1) <= 0.10 and max(peaks) < 100 * MIB
    print(f"peak RSS 2 GB / 0.5 GB = {ratio:.3f} ({'within' if ok else 'MISSES'} target)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="e.g. 500M, 2G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--level", default="best_speed", choices=("best_speed", "best_compression"))
    parser.add_argument("--memory", action="store_true", help="peak RSS at 0.5 GB and at 2 GB")
    args = parser.parse_args(argv)
    print(f"{CORES} cores, wingsbak at {wingsbak_bin()}")
    if args.memory:
        memory(args.level)
    else:
        speed(args.size, args.runs, args.level)


if __name__ == "__main__":
    main()
