"""Browsing a backup: issue 21's targets, each printed beside its baseline.

    python -m bench.browse [--size-gib 10] [--entries N] [--work DIR] [--runs 3]

A tree of ``--size-gib`` GiB and ``--entries`` entries (default 10,000 a GiB: 100,000 at
10 GiB) - small configs and player files in folders of 1,000, and 1 MiB region-like files,
half random, half text - is archived twice: by today's writer (archive/archiver.py with ISA-L's
threaded single-stream gzip writer, as wingsbak wrote before members) and by the member
writer with its index. Then, each median of ``--runs``:

- write: time and size of the member archive and index against today's writer (target: at
  most 5 % slower, at most 1 % larger). Both run in this process under the heap bounds the
  member writer sets (archive/gzmembers.py), which spare today's writer most of its page
  faults too: a stricter baseline than today's code, which runs without them;
- first browse of today's archive (no index: built in one pass) against ``gzip -dc >
  /dev/null`` on it (target: at least as fast);
- listing folders through the index, p50 over 200 folders each opened afresh, against
  ``tar -tzf`` (target p50 < 100 ms);
- reading the 1 MiB file stored last (a fresh view: the index opened and checked) against
  ``tar -xzOf ARCHIVE PATH`` (target < 200 ms);
- restoring that file as a Move does (read from the backup, written under a temporary name,
  fsynced, renamed into place) (target < 0.5 s).

Needs about 2.6 x the size of the tree on disk (tree, two archives); it is not part of CI.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from wingsbak.archive import archiver, codecs, gzmembers
from wingsbak.archive.index import FileSource, index_path
from wingsbak.browse.tarview import open_tar_view

GIB = 1024**3
MIB = 1024**2
_FOLDER = 1000


def build_tree(root: Path, size: int, entries: int) -> None:
    marker = root.with_name(root.name + ".complete")
    want = f"{size} {entries}"
    if marker.exists() and marker.read_text() == want:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(21)
    noise = rng.randbytes(8 * MIB)
    text = b"".join(b"[%05d] [Server thread/INFO]: Saving chunks for level %d\n" % (i, i % 7)
                    for i in range(200_000))
    big = max(1, size // MIB)
    small = max(0, entries - big)
    small_each = 2048
    for i in range(big):
        folder = root / "world" / f"region{i // _FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        a = rng.randrange(0, len(noise) - MIB // 2)
        b = rng.randrange(0, len(text) - MIB // 2)
        (folder / f"r.{i}.mca").write_bytes(noise[a : a + MIB // 2] + text[b : b + MIB // 2])
    for i in range(small):
        folder = root / "plugins" / f"data{i // _FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        b = rng.randrange(0, len(text) - small_each)
        (folder / f"player{i}.json").write_bytes(text[b : b + small_each])
    marker.write_text(want)


def today_writer(raw: object, level: str = "best_speed", threads: int | None = None) -> object:
    """wingsbak's gzip writer before members: ISA-L's threaded single stream."""
    from isal import igzip_threaded

    return igzip_threaded.open(
        raw, "wb", compresslevel=1, threads=threads or codecs.compression_threads(),
        block_size=codecs.BLOCK_SIZE,
    )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def shell(cmd: str) -> Callable[[], object]:
    return lambda: subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)


def median(fn: Callable[[], object], runs: int) -> float:
    return statistics.median(timed(fn) for _ in range(runs))


def row(name: str, ours: float, base: float, base_name: str, target: str) -> None:
    print(f"{name:<34}{ours:>10.3f}{base:>12.3f}  x{ours / base:>6.3f}  {base_name:<29}{target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.browse")
    ap.add_argument("--size-gib", type=float, default=10.0)
    ap.add_argument("--entries", type=int, default=0, help="default: 10,000 a GiB")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wingsbak-browse")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    size = int(args.size_gib * GIB)
    entries = args.entries or int(10_000 * args.size_gib)
    args.work.mkdir(parents=True, exist_ok=True)
    gzmembers.keep_blocks_in_heap()  # for both writers, not only the runs after the first
    tree = args.work / "tree"
    print(f"tree: {args.size_gib:g} GiB, {entries} entries, under {args.work}", flush=True)
    build_tree(tree, size, entries)

    old = args.work / "today.tar.gz"
    new = args.work / "members.tar.gz"
    original = codecs.GZIP

    def write_today() -> None:
        archiver.GZIP = codecs.Codec(**{**{f: getattr(original, f) for f in original.__slots__},
                                        "open_writer": today_writer})  # type: ignore[arg-type]
        try:
            archiver.archive_to_file(tree, old)
        finally:
            archiver.GZIP = original

    def write_members() -> None:
        archiver.archive_to_file(tree, new, index=True)

    t_new, t_old = [], []
    for _ in range(args.runs):
        t_old.append(timed(write_today))
        t_new.append(timed(write_members))
    size_old, size_new = old.stat().st_size, new.stat().st_size
    print(f"{'':<34}{'wingsbak s':>10}{'baseline s':>12}  {'ratio':>7}  {'baseline':<29}target")
    row("write archive (+index)", statistics.median(t_new), statistics.median(t_old),
        "today's writer", "x <= 1.05")
    today = "today's writer"
    index_bytes = index_path(new).stat().st_size
    print(
        f"{'archive size (bytes)':<34}{size_new:>10}{size_old:>12}  x{size_new / size_old:>6.4f}"
        f"  {today:<29}x <= 1.01   (index {index_bytes} bytes)"
    )

    legacy_index = args.work / "today.index"

    def first_browse() -> None:
        legacy_index.unlink(missing_ok=True)
        open_tar_view(FileSource(old), legacy_index).close()

    row("first browse, unindexed (1 pass)", median(first_browse, args.runs),
        median(shell(f"gzip -dc {old} > /dev/null"), args.runs), "gzip -dc > /dev/null",
        "x <= 1.00")

    view = open_tar_view(FileSource(new), index_path(new))
    folders = [e.path for e in view.walk("") if e.kind == "dir"]
    files = [e for e in view.walk("") if e.kind == "file" and e.size == MIB]
    view.close()
    rng = random.Random(5)
    sample = rng.sample(folders, min(200, len(folders)))
    listings = []
    for folder in sample:
        start = time.perf_counter()
        v = open_tar_view(FileSource(new), index_path(new))
        v.listdir(folder)
        listings.append(time.perf_counter() - start)
        v.close()
    row("list a folder, p50 (fresh view)", statistics.median(listings),
        median(shell(f"tar -tzf {new} > /dev/null"), args.runs), "tar -tzf", "p50 < 0.100 s")

    v = open_tar_view(FileSource(new), index_path(new))
    last = max(files, key=lambda e: v.index.get(e.path.encode()).header_offset)  # type: ignore[union-attr]
    v.close()

    def read_last() -> None:
        view = open_tar_view(FileSource(new), index_path(new))
        with view.open(last.path) as f:
            assert len(f.read()) == MIB
        view.close()

    row("read the last 1 MiB file", median(read_last, args.runs),
        median(shell(f"tar -xzOf {new} {last.path} > /dev/null"), args.runs),
        "tar -xzOf archive that/file", "< 0.200 s")

    dest = args.work / "restored"
    dest.mkdir(exist_ok=True)

    def restore_one() -> None:
        view = open_tar_view(FileSource(new), index_path(new))
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=".restore.")
        with view.open(last.path) as f, os.fdopen(fd, "wb") as out:
            while chunk := f.read(MIB):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest / "last.mca")
        view.close()

    row("restore one file (as a Move)", median(restore_one, args.runs),
        median(shell(f"tar -xzf {new} -C {dest} {last.path}"), args.runs),
        "tar -xzf archive that/file", "< 0.500 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
