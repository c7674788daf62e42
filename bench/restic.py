"""The restic store against ``.tar.gz`` backups and against restic run by hand.

    python -m bench.restic [--size 200M] [--backups 10] [--pattern players|scattered]
                           [--restic PATH]

On a copy of the game-server data set (bench/dataset.py), ``--backups`` backups are made
twice: as ``.tar.gz`` archives (wingsbak's engine) and into one restic repository through
wingsbak's restic store. Between two backups about 2 % of the bytes change: region files are
rewritten in place, the latest log is appended to, and a plugin jar is replaced. How the region
files change is ``--pattern``:

- ``players`` (the default), as a game saves them: the region files where players were (one
  standing for the spawn area every time, others at random) get chunk writes adding up to a
  quarter to a half of their size, each chunk to a run of 1-5 sectors of 4 KiB at a random
  place (the game uses the first free run: this errs against restic), and their 8 KiB header
  rewritten;
- ``scattered``, restic's worst case: 64 KiB writes at random places in any region file, so
  every region file changes a little every time and every write stores a whole restic chunk
  (about 1 MiB) again.

Printed:

- the repository's size after the last backup against the sum of the ``.tar.gz`` archives
  (target: at most 0.2x);
- the median time of backups 2 to N against the median ``.tar.gz`` backup (at most 0.8x);
- wingsbak's first backup against ``restic backup .`` run directly on the same tree, each into
  a fresh repository (at most 1.15x);
- the last snapshot downloaded as a ``.tar.gz`` against ``restic dump --archive tar | pigz -1
  -p 2`` (throughput at least 0.8x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.dataset import DATA_DIR, MB, build_dataset, parse_size, tree_bytes
from wingsbak.archive import archive_to_file
from wingsbak.archive.options import ArchiveOptions
from wingsbak.storage.base import BackupSource
from wingsbak.storage.restic import ResticConfig, ResticStore

WORK = DATA_DIR / "restic"
SERVER = "00000000-0000-4000-8000-00000000beef"
SECTOR = 4096  # an Anvil region file's unit


def backup_uuid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def change_common(tree: Path, rng: random.Random, round_no: int, budget: int) -> int:
    """Replace one plugin jar and append to the latest log (a tenth of ``budget``).
    Returns the bytes written."""
    jars = sorted((tree / "plugins").glob("*.jar"))
    jar = jars[round_no % len(jars)]
    jar_size = jar.stat().st_size
    jar.unlink()
    jar.write_bytes(rng.randbytes(jar_size))
    log = tree / "logs" / "latest.log"
    with open(log, "ab") as f:
        line = b"[12:00:00] [Server thread/INFO]: player joined the game\n"
        f.write(line * (budget // 10 // len(line)))
    return jar_size + budget // 10 // len(line) * len(line)


def rewrite_chunks(region: Path, rng: random.Random, nbytes: int) -> int:
    """Write ``nbytes`` into one Anvil region file in place as the game saves chunks: each
    chunk goes to a run of 1-5 sectors of 4 KiB after the 8 KiB header (locations and
    timestamps), which is then rewritten. Returns the bytes written.

    The game puts a saved chunk in the first free run of sectors (often at the end of the
    file) and frees its old one; writing at random places instead dirties more of restic's
    chunks, so this errs against restic."""
    sectors = region.stat().st_size // SECTOR  # whole sectors; a partial last one stays
    written = 0
    with open(region, "r+b") as f:
        while written < nbytes and sectors > 7:
            run = rng.randrange(1, 6)
            start = rng.randrange(2, sectors - run + 1)
            f.seek(start * SECTOR)
            f.write(rng.randbytes(run * SECTOR))
            written += run * SECTOR
        f.seek(0)
        f.write(rng.randbytes(2 * SECTOR))
    return written + 2 * SECTOR


def change_players(tree: Path, round_no: int, total: int) -> int:
    """About 2 % of ``total`` bytes, as a game changes a server between two backups: the
    region files where players were get chunk writes adding up to a quarter to a half of
    their size (one region, standing for the spawn area, every time; others at random), the
    latest log grows, a plugin jar is replaced. Returns the bytes written."""
    rng = random.Random(1000 + round_no)
    budget = total // 50
    written = change_common(tree, rng, round_no, budget)
    spawn, *others = sorted((tree / "world" / "region").iterdir())
    order = [spawn, *rng.sample(others, len(others))]
    for region in order:
        if written >= budget:
            break
        share = region.stat().st_size * rng.uniform(0.25, 0.5)
        written += rewrite_chunks(region, rng, int(min(share, budget - written)))
    return written


def change_scattered(tree: Path, round_no: int, total: int) -> int:
    """About 2 % of ``total`` bytes with restic's worst case for the region files: 64 KiB
    writes at random places in any region file, so that every region file changes a little
    each time and each write dirties a whole restic chunk. Returns the bytes written."""
    rng = random.Random(1000 + round_no)
    budget = total // 50
    written = change_common(tree, rng, round_no, budget)
    regions = sorted((tree / "world" / "region").iterdir())
    while written < budget:
        region = rng.choice(regions)
        size = region.stat().st_size
        chunk = min(64 * 1024, budget - written)
        with open(region, "r+b") as f:
            f.seek(rng.randrange(0, max(1, size - chunk)) // SECTOR * SECTOR)
            f.write(rng.randbytes(chunk))
        written += chunk
    return written


PATTERNS = {"players": change_players, "scattered": change_scattered}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def restic_env(repo: Path, password: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(
        RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD_FILE=str(password), RESTIC_CACHE_DIR=str(cache)
    )
    return env


class _Null:
    """A writable that counts and drops what it gets (the download's client)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="200M", help="data set size (default 200M)")
    parser.add_argument("--backups", type=int, default=10)
    parser.add_argument(
        "--pattern",
        choices=sorted(PATTERNS),
        default="players",
        help="how the region files change between backups (default players)",
    )
    parser.add_argument("--restic", default="restic", help="the restic program (default: on PATH)")
    args = parser.parse_args(argv)
    restic = shutil.which(args.restic) or args.restic
    change = PATTERNS[args.pattern]
    source = build_dataset(total_bytes=parse_size(args.size))
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    tree = WORK / "server"
    shutil.copytree(source, tree, symlinks=True)
    total, entries = tree_bytes(tree)
    version = subprocess.run([restic, "version"], capture_output=True, text=True, check=True)
    print(
        f"data set: {total / MB:.0f} MB, {entries} entries; {args.backups} backups, changes:"
        f" {args.pattern}; {version.stdout.strip()}"
    )
    password = WORK / "password"
    password.write_text("bench\n")
    env = restic_env(WORK / "direct-repo", password, WORK / "cache")
    subprocess.run([restic, "init"], env=env, check=True, capture_output=True)

    store = ResticStore(
        ResticConfig(repository=str(WORK / "repo"), password_file=str(password), binary=restic),
        WORK / "cache",
        state_file=WORK / "forget.json",
    )
    assert store.start(), "restic is not usable"
    executor = ThreadPoolExecutor(2)

    def restic_backup(i: int) -> tuple[float, int]:
        options = ArchiveOptions(cancel=threading.Event())
        src = BackupSource(SERVER, backup_uuid(i), tree, "", options, executor)
        started = time.perf_counter()
        outcome = asyncio.run(store.create(src))
        return time.perf_counter() - started, outcome.size

    targz_times: list[float] = []
    targz_sizes: list[int] = []
    restic_times: list[float] = []
    direct_first = 0.0
    changed = 0
    for i in range(args.backups):
        if i:
            changed = change(tree, i, total)
        out = WORK / f"backup-{i}.tar.gz"
        started = time.perf_counter()
        archive_to_file(tree, out)
        targz_times.append(time.perf_counter() - started)
        targz_sizes.append(out.stat().st_size)
        for sidecar in WORK.glob(f"backup-{i}.tar.gz*"):
            sidecar.unlink()
        if i == 0:
            started = time.perf_counter()
            subprocess.run(
                [restic, "backup", "--json", "--host", "bench", "."],
                cwd=tree,
                env=env,
                check=True,
                capture_output=True,
            )
            direct_first = time.perf_counter() - started
        seconds, added = restic_backup(i)
        restic_times.append(seconds)
        print(
            f"backup {i + 1:2d}: .tar.gz {targz_times[-1]:6.2f} s {targz_sizes[-1] / MB:7.1f} MB"
            f" | restic store {seconds:6.2f} s, added {added / MB:7.1f} MB"
            f" | changed {changed / MB:5.1f} MB"
        )

    snapshot = store.snapshots(f"server:{SERVER}")[-1].id
    sink = _Null()
    started = time.perf_counter()
    store.dump(snapshot, sink)  # type: ignore[arg-type]
    ours = time.perf_counter() - started
    store_env = restic_env(WORK / "repo", password, WORK / "cache")
    started = time.perf_counter()
    subprocess.run(
        f"{restic} dump --archive tar {snapshot} / | pigz -1 -p 2 > /dev/null",
        shell=True,
        env=store_env,
        check=True,
    )
    peer = time.perf_counter() - started
    repo = dir_bytes(WORK / "repo")
    # What restic costs when nothing changed: opening the repository and comparing every
    # entry with the parent snapshot; measured after the repository's size was taken.
    unchanged, _ = restic_backup(args.backups)
    print(f"a backup with nothing changed: {unchanged:.2f} s")
    store.stop()
    executor.shutdown()

    repo_ratio = repo / sum(targz_sizes)
    later = statistics.median(restic_times[1:]) if len(restic_times) > 1 else restic_times[0]
    time_ratio = later / statistics.median(targz_times)
    first_ratio = restic_times[0] / direct_first
    throughput_ratio = peer / ours
    rows = [
        (
            f"repository after {args.backups}: {repo / MB:.1f} MB vs {sum(targz_sizes) / MB:.1f}"
            f" MB of .tar.gz",
            repo_ratio,
            repo_ratio <= 0.2,
            "<= 0.2x",
        ),
        (
            f"median backup 2-{args.backups}: {later:.2f} s vs .tar.gz"
            f" {statistics.median(targz_times):.2f} s",
            time_ratio,
            time_ratio <= 0.8,
            "<= 0.8x",
        ),
        (
            f"first backup: {restic_times[0]:.2f} s vs restic backup . {direct_first:.2f} s",
            first_ratio,
            first_ratio <= 1.15,
            "<= 1.15x",
        ),
        (
            f"download as .tar.gz: {sink.size / ours / MB:.0f} MB/s ({ours:.2f} s) vs restic dump"
            f" | pigz -1 -p 2 ({peer:.2f} s)",
            throughput_ratio,
            throughput_ratio >= 0.8,
            ">= 0.8x",
        ),
    ]
    failed = 0
    for text, ratio, ok, target in rows:
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {ratio:.3f}x (target {target}): {text}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
