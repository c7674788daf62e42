"""A deterministic data set that looks like a game server, for the archive benchmark.

The mix decides what a backup costs, so it imitates a Minecraft server: region files and jars
that are already compressed (the compressor mostly copies them), logs that compress well,
small configs, player data, and one tree of many small files (a mod cache or a datapack) where
per-file overhead rather than compression decides the speed.

    python -m bench.dataset [--size 500M] [--out bench/.data]

Everything comes from one seeded ``random.Random``, so a given size always yields the same
bytes, names and mtimes. A finished tree is marked by ``<tree>.complete`` beside it (outside
the tree, so it is never archived) and reused as is.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

MB = 1000 * 1000
KIB = 1024
MIB = 1024 * 1024
DEFAULT_SIZE = 500 * MB
DATA_DIR = Path(__file__).resolve().parent / ".data"
FORMAT_VERSION = 1
SEED = 20240611
MTIME = 1_700_000_000  # fixed, so archives of the same tree are byte-identical

# Share of the total per kind; the many-small-files tree gets what is left.
_REGION_SHARE = 0.45
_JAR_SHARE = 0.12
_LOG_SHARE = 0.16
_PLAYERDATA_SHARE = 0.01
# 30,000 small files per 500 MB (about a quarter of the bytes), scaled with the size so that a
# bigger data set also has proportionally more entries.
_SMALL_FILES_PER_MB = 60
SMALL_TREE = "world/datapacks/cache"

_WORDS = (  # noqa: SIM905 - a sentence reads better than sixty quoted words
    "Server thread INFO WARN Preparing spawn area Saving chunks for level ServerLevel "
    "player joined the game left lost connection Timed out Can't keep up! Is the server "
    "overloaded? Running behind skipping ticks UUID of player is Done For help type "
    "help Loaded plugins Enabling Disabling version entity minecraft:zombie moved wrongly "
    "overworld the_nether the_end Autosave completed Starting minecraft server on port"
).split()


def _size_label(total_bytes: int) -> str:
    if total_bytes % MB == 0:
        return f"{total_bytes // MB}M"
    return str(total_bytes)


def tree_path(total_bytes: int, base: Path = DATA_DIR) -> Path:
    return base / f"gameserver-{_size_label(total_bytes)}"


def _marker(tree: Path) -> Path:
    return tree.with_name(tree.name + ".complete")


def _marker_text(total_bytes: int) -> str:
    return json.dumps({"version": FORMAT_VERSION, "seed": SEED, "bytes": total_bytes})


class _Gen:
    """Content generators over one seeded stream; pools keep the per-file cost low."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        # Pools that small files slice from: generating per file would dominate the run time.
        self.random_pool = rng.randbytes(4 * MIB)
        lines = [self._log_line(i) for i in range(4000)]
        self.text_pool = "".join(lines).encode()

    def _log_line(self, i: int) -> str:
        rng = self.rng
        h, m, s = rng.randrange(24), rng.randrange(60), rng.randrange(60)
        words = " ".join(rng.choices(_WORDS, k=rng.randrange(4, 14)))
        level = rng.choice(("INFO", "INFO", "INFO", "WARN", "ERROR"))
        return f"[{h:02d}:{m:02d}:{s:02d}] [Server thread/{level}]: {words} #{i}\n"

    def compressed(self, n: int) -> bytes:
        """Already compressed data: random bytes."""
        return self.rng.randbytes(n)

    def region(self, n: int) -> bytes:
        """An Anvil region: an 8 KiB location/timestamp header, then 4 KiB sectors of
        compressed chunks, each padded with zeros to its sector boundary."""
        rng = self.rng
        out = bytearray(rng.randbytes(4 * KIB))
        out += bytes(4 * KIB)
        while len(out) < n:
            sectors = rng.randrange(1, 6)
            used = sectors * 4 * KIB - rng.randrange(0, 4 * KIB)
            out += rng.randbytes(used)
            out += bytes(sectors * 4 * KIB - used)
        del out[n:]
        return bytes(out)

    def text(self, n: int) -> bytes:
        """Log-like text: lines from a pool, in a random order, so it compresses ~5-10x."""
        pool = self.text_pool
        out = bytearray()
        rng = self.rng
        while len(out) < n:
            start = rng.randrange(0, len(pool) - 64 * KIB)
            out += pool[start : start + rng.randrange(4 * KIB, 64 * KIB)]
        del out[n:]
        return bytes(out)

    def small(self, n: int) -> bytes:
        """A small cache file: half of them text-like (json), half binary."""
        rng = self.rng
        pool = self.text_pool if rng.random() < 0.5 else self.random_pool
        start = rng.randrange(0, len(pool) - n)
        return pool[start : start + n]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _write_chunked(path: Path, size: int, make: Callable[[int], bytes]) -> None:
    """Write ``size`` bytes made 16 MiB at a time, so a big file never sits in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(make(n))
            left -= n


def _generate(tree: Path, total_bytes: int) -> None:
    rng = random.Random(SEED)
    gen = _Gen(rng)

    # Region files: Minecraft's are up to a few MiB; sizes vary.
    budget = int(total_bytes * _REGION_SHARE)
    i = 0
    while budget > 0:
        n = min(budget, rng.randrange(1 * MIB, 12 * MIB))
        x, z = i % 16 - 8, i // 16 - 8
        _write_chunked(tree / "world" / "region" / f"r.{x}.{z}.mca", n, gen.region)
        budget -= n
        i += 1

    budget = int(total_bytes * _JAR_SHARE)
    i = 0
    while budget > 0:
        n = min(budget, rng.randrange(100 * KIB, 8 * MIB))
        _write_chunked(
            tree / "plugins" / f"Plugin{i:03d}-{rng.randrange(1, 9)}.0.jar", n, gen.compressed
        )
        budget -= n
        i += 1

    budget = int(total_bytes * _LOG_SHARE)
    i = 0
    while budget > 0:
        n = min(budget, rng.randrange(1 * MIB, 20 * MIB))
        name = "latest.log" if i == 0 else f"2024-05-{i % 28 + 1:02d}-{i // 28 + 1}.log"
        _write_chunked(tree / "logs" / name, n, gen.text)
        budget -= n
        i += 1

    budget = int(total_bytes * _PLAYERDATA_SHARE)
    while budget > 0:
        n = min(budget, rng.randrange(2 * KIB, 12 * KIB))
        uuid = rng.randbytes(16).hex()
        uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
        _write(tree / "world" / "playerdata" / f"{uuid}.dat", gen.compressed(n))
        budget -= n

    # Configs: a handful of small text files in the usual places.
    _write(
        tree / "server.properties",
        b"".join(b"%s=%d\n" % (w.encode(), rng.randrange(1000)) for w in _WORDS[:60]),
    )
    _write(tree / "eula.txt", b"eula=true\n")
    for name in ("ops.json", "whitelist.json", "banned-players.json", "usercache.json"):
        entries = [{"uuid": rng.randbytes(16).hex(), "name": rng.choice(_WORDS)} for _ in range(50)]
        _write(tree / name, json.dumps(entries, indent=2).encode())
    for p in range(20):
        body = "".join(f"{w}: {rng.randrange(100)}\n" for w in rng.choices(_WORDS, k=80))
        _write(tree / "plugins" / f"Plugin{p:03d}" / "config.yml", body.encode())
    (tree / "world" / "session.lock").write_bytes(b"\xe2\x98\x83")

    # The many-small-files tree: 100 directories of a few hundred files, 0.5-8 KiB each.
    count = max(1000, total_bytes * _SMALL_FILES_PER_MB // MB)
    small = tree / SMALL_TREE
    dirs = 100
    for d in range(dirs):
        (small / f"{d:02x}").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        n = rng.randrange(512, 8 * KIB + 1)
        suffix = ".json" if k % 2 else ".bin"
        path = small / f"{k % dirs:02x}" / f"{k:06d}{suffix}"
        with open(path, "wb") as f:
            f.write(gen.small(n))

    # Fixed mtimes (files and directories, deepest first) keep archives byte-identical.
    for dirpath, _dirnames, filenames in os.walk(tree, topdown=False):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
        os.utime(dirpath, (MTIME, MTIME))


def build_dataset(
    path: str | os.PathLike[str] | None = None, total_bytes: int = DEFAULT_SIZE
) -> Path:
    """Return a complete data set of about ``total_bytes`` at ``path`` (default under
    ``bench/.data``), generating it only when no complete one is there."""
    tree = Path(path) if path is not None else tree_path(total_bytes)
    marker = _marker(tree)
    want = _marker_text(total_bytes)
    if tree.is_dir() and marker.is_file() and marker.read_text() == want:
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    marker.unlink(missing_ok=True)
    tree.mkdir(parents=True)
    _generate(tree, total_bytes)
    marker.write_text(want)
    return tree


def tree_bytes(tree: Path) -> tuple[int, int]:
    """(bytes of file data, number of entries) under ``tree``."""
    total = entries = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total, entries


def parse_size(text: str) -> int:
    """'500M', '2G', '1.5G' or plain bytes; decimal units (MB, as the benchmark reports)."""
    units = {"K": 1000, "M": MB, "G": 1000 * MB}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="e.g. 500M, 2G")
    parser.add_argument("--out", type=Path, default=None, help="tree to create")
    args = parser.parse_args(argv)
    start = time.monotonic()
    tree = build_dataset(args.out, args.size)
    data, entries = tree_bytes(tree)
    print(f"{tree}: {data / MB:.0f} MB in {entries} entries ({time.monotonic() - start:.1f} s)")


if __name__ == "__main__":
    main()
