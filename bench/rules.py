"""Ignore lines: what walking and matching a tree costs, against git's own matcher.

    python -m bench.rules [--budget 60] [--only 200k|9500]

The trees are empty files (so only the walk and the matching count), made once under
``bench/.data/`` and reused:

- 200,000 files in 200 directories, with no lines and with 100 realistic lines (plugin
  caches, logs, tiles, old player data, a few negations);
- 20,100 files in 201 directories, with 9,500 request lines naming files (``f1234``: 55 KB,
  under the 64 KiB body limit), and with 9,500 wildcard lines (``f1234*``, as a
  ``.pteroignore`` would hold them).

Each case times wingsbak's walk with the rules (``wingsbak.archive.walk``), then a whole
backup with progress reporting (``write_archive``, level ``none``, into a sink that drops
the bytes: the walk, the counting pass and the tar stream), and the peer, ``git ls-files -o
--exclude-from=LINES`` (git's walk and matcher, listing what is not ignored), and checks that
wingsbak keeps the same files as git. A run of wingsbak that would pass ``--budget`` seconds is
stopped there and its time extrapolated from the entries it got through (marked ``~``): the
code before the fix needs minutes per case. Run it against another tree of the code with
``PYTHONPATH=<that tree> python -m bench.rules`` from this one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wingsbak.archive import ArchiveProgress, Cancelled, IgnoreRules, write_archive
from wingsbak.archive.walk import Kind, walk

DATA_DIR = Path(__file__).resolve().parent / ".data"
EXTS = ("yml", "json", "log", "dat", "dat_old", "png", "tmp", "txt", "mca", "gz")
SUBDIRS = ("data", "logs", "cache", "lang", "tiles")


def realistic_lines(n: int = 100) -> list[str]:
    """``n`` ignore lines as a Minecraft server's owner writes them: 20 common ones, then
    plugin-specific ones (literal paths, wildcards and negations) cycling over 20 plugins."""
    lines = [
        "*.log",
        "*.log.gz",
        "logs/",
        "crash-reports/",
        "cache/",
        "/world/session.lock",
        "*.tmp",
        "*.bak",
        "*.dat_old",
        ".git/",
        "node_modules/",
        "/backups/",
        "/libraries/",
        "/versions/",
        "debug/",
        "*.jar.old",
        "plugins/*/cache/",
        "!plugins/P3/logs/",
        "/dynmap/web/tiles/",
        "!important.log",
    ]
    kinds = (
        "plugins/P{i}/tiles/*.png",
        "/plugins/P{i}/data/f{i}.json",
        "!plugins/P{i}/data/*.log",
        "/world_{i}/",
        "plugins/P{i}/lang/*_old.yml",
    )
    i = 0
    while len(lines) < n:
        lines.append(kinds[i % len(kinds)].format(i=i % 20))
        i += 1
    return lines[:n]


def request_lines(n: int = 9500, wildcard: bool = False) -> list[str]:
    return [f"f{k}*" if wildcard else f"f{k}" for k in range(n)]


def _make_tree(
    name: str, dirs: list[str], files_per_dir: int, file_name: Callable[[int], str]
) -> Path:
    tree = DATA_DIR / name
    marker = tree.with_name(name + ".complete")
    if marker.exists():
        return tree
    print(f"making {tree} ...", flush=True)
    n = 0
    for d in dirs:
        base = tree / d
        base.mkdir(parents=True, exist_ok=True)
        for _ in range(files_per_dir):
            (base / file_name(n)).touch()
            n += 1
    marker.write_text(str(n))
    return tree


def server_tree() -> Path:
    """200,000 empty files in 200 plugin directories."""
    dirs = [f"plugins/P{p}/{SUBDIRS[s]}" for p in range(40) for s in range(len(SUBDIRS))]
    return _make_tree("rules-200k", dirs, 1000, lambda n: f"f{n}.{EXTS[n % len(EXTS)]}")


def request_tree() -> Path:
    """20,100 empty files ``d<k>/f<n>`` in 201 directories."""
    return _make_tree("rules-20100", [f"d{k}" for k in range(201)], 100, lambda n: f"f{n}")


def count_entries(root: Path) -> int:
    return sum(1 for _ in walk(root))


def time_walk(root: Path, rules: IgnoreRules, budget: float) -> tuple[float, bool, set[str]]:
    """Seconds for wingsbak's walk with ``rules`` (extrapolated past ``budget``), whether it
    was extrapolated, and the files it kept."""
    total = count_entries(root)
    kept: set[str] = set()
    started = time.perf_counter()
    for seen, entry in enumerate(walk(root, rules), 1):
        if entry.kind is Kind.FILE:
            kept.add(entry.relpath)
        if seen % 256 == 0 and time.perf_counter() - started > budget:
            return (time.perf_counter() - started) * total / seen, True, kept
    return time.perf_counter() - started, False, kept


class _NullSink:
    def write(self, data: bytes | memoryview, /) -> int:
        return len(data)


def time_backup(root: Path, rules: IgnoreRules, budget: float) -> tuple[float, bool]:
    """Seconds for a whole backup with progress reporting (extrapolated past ``budget``)."""
    total = count_entries(root)
    cancel = threading.Event()
    timer = threading.Timer(budget, cancel.set)
    files = [0]

    def progress(p: ArchiveProgress) -> None:
        files[0] = p.files

    started = time.perf_counter()
    timer.start()
    try:
        write_archive(root, _NullSink(), rules, level="none", progress=progress, cancel=cancel)
    except Cancelled:
        done = max(files[0], 1)
        return (time.perf_counter() - started) * total / done, True
    finally:
        timer.cancel()
    return time.perf_counter() - started, False


def time_git(root: Path, lines: list[str]) -> tuple[float, set[str]]:
    """Seconds for ``git ls-files -o --exclude-from`` over ``root``, and the files it keeps."""
    with tempfile.TemporaryDirectory() as tmp:
        git_dir = Path(tmp) / "repo.git"
        subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
        excludes = Path(tmp) / "lines"
        excludes.write_text("".join(line + "\n" for line in lines))
        cmd = [
            "git",
            f"--git-dir={git_dir}",
            f"--work-tree={root}",
            "-c",
            "core.bare=false",
            "ls-files",
            "-z",
            "-o",
            f"--exclude-from={excludes}",
        ]
        started = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, cwd=root).stdout
        seconds = time.perf_counter() - started
    return seconds, {p.decode() for p in out.split(b"\0") if p}


def match_cost(root: Path, lines: list[str], limit: int = 50_000) -> float:
    """Microseconds of ``IgnoreRules.excludes`` per path, over the tree's first ``limit``
    entries (each asked as the walk would ask it, parents not excluded)."""
    rules = IgnoreRules(lines)
    paths = [
        (e.relpath, e.kind is Kind.DIR) for _, e in zip(range(limit), walk(root), strict=False)
    ]
    started = time.perf_counter()
    for relpath, is_dir in paths:
        rules.excludes(relpath, is_dir)
    return (time.perf_counter() - started) / len(paths) * 1e6


def _fmt(seconds: float, extrapolated: bool) -> str:
    return f"{'~' if extrapolated else ''}{seconds:.2f} s"


def run_case(name: str, root: Path, lines: list[str], budget: float) -> None:
    rules = IgnoreRules(lines)
    entries = count_entries(root)
    walk_s, walk_x, kept = time_walk(root, rules, budget)
    backup_s, backup_x = time_backup(root, rules, budget)
    git_s, git_kept = time_git(root, lines)
    same = "n/a (extrapolated)" if walk_x else ("same files" if kept == git_kept else "MISMATCH")
    print(
        f"{name:<34} {entries:>7} entries  walk+match {_fmt(walk_s, walk_x):>10}"
        f" ({walk_s / entries * 1e6:7.1f} us/entry)  backup {_fmt(backup_s, backup_x):>10}"
        f"  git {git_s:6.2f} s  walk/git {walk_s / git_s:6.2f}x  {same}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds before extrapolating")
    parser.add_argument("--only", choices=("200k", "9500"), default=None)
    args = parser.parse_args()
    os.environ.setdefault("WINGSBAK_LOG_LEVEL", "warning")
    from wingsbak.log import configure_logging

    configure_logging("warning")
    print(f"code under test: {Path(__import__('wingsbak').__file__).parent}")
    if args.only in (None, "200k"):
        root = server_tree()
        run_case("200k files, no lines", root, [], args.budget)
        run_case("200k files, 100 realistic lines", root, realistic_lines(), args.budget)
        print(
            "matching alone, 100 realistic lines:",
            f"{match_cost(root, realistic_lines()):.2f} us/entry",
        )
    if args.only in (None, "9500"):
        root = request_tree()
        run_case("20,100 files, 9,500 request lines", root, request_lines(), args.budget)
        wildcards = request_lines(wildcard=True)
        run_case("20,100 files, 9,500 wildcard lines", root, wildcards, args.budget)


if __name__ == "__main__":
    main()
