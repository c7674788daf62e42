"""How long a running game's saving stays paused for its backup: with the clone (FICLONE on a
loop-mounted XFS image with reflink) against reading the live files (the archive's time).

    python -m bench.quiesce [--gib 10] [--files 2500] [--fs xfs|btrfs]

Makes a world of ``--gib`` GiB of incompressible region files (``--files`` of them, plus a
tree of small files) on a fresh image, then measures, with the page cache dropped before
each: ``clone_tree`` as the backup runs it while saving is paused (the pause is this plus one
console command's round trip), and ``write_archive`` of the live tree into /dev/null (the
pause without a clone: the after commands go when the last file has been read). Needs root,
``mkfs.xfs`` (xfsprogs) or ``mkfs.btrfs`` (btrfs-progs) and loop devices.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wingsbak.archive.archiver import write_archive
from wingsbak.archive.clone import clone_tree, remove_clone
from wingsbak.archive.rules import IgnoreRules

MIB = 1024 * 1024
GIB = 1024 * MIB


def make_world(root: Path, size: int, files: int) -> None:
    region = root / "world" / "region"
    region.mkdir(parents=True)
    per = size // files
    block = os.urandom(MIB)
    for i in range(files):
        with open(region / f"r.{i % 64}.{i // 64}.mca", "wb") as f:
            left = per
            while left:
                # Each MiB differs (a rotated block), so nothing deduplicates or compresses.
                n = min(left, MIB)
                shift = (i * 7919 + left) % MIB
                f.write((block[shift:] + block[:shift])[:n])
                left -= n
    small = root / "world" / "data"
    small.mkdir()
    for i in range(2000):
        (small / f"player-{i}.dat").write_bytes(os.urandom(2048))


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


class DevNull:
    def __init__(self) -> None:
        self.f = open(os.devnull, "wb")  # noqa: SIM115 - closed by close()

    def write(self, data: bytes | memoryview) -> int:
        return self.f.write(data)

    def close(self) -> None:
        self.f.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=2500)
    parser.add_argument("--fs", choices=("xfs", "btrfs"), default="xfs")
    args = parser.parse_args()
    size = int(args.gib * GIB)
    with tempfile.TemporaryDirectory(prefix="wingsbak-quiesce-") as tmp:
        image, mnt = Path(tmp) / "fs.img", Path(tmp) / "mnt"
        mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(size + max(size // 5, 1 * GIB))
        mkfs = ["mkfs.xfs", "-q", "-m", "reflink=1"] if args.fs == "xfs" else ["mkfs.btrfs", "-q"]
        subprocess.run([*mkfs, str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        try:
            server = mnt / "volumes" / "server"
            server.mkdir(parents=True)
            started = time.monotonic()
            make_world(server, size, args.files)
            print(f"world: {args.gib:g} GiB in {args.files} region files and 2000 small ones "
                  f"on {args.fs} (written in {time.monotonic() - started:.0f} s)")
            rules = IgnoreRules()
            drop_caches()
            started = time.monotonic()
            tree = clone_tree(server, mnt / "volumes", "bench", rules)
            cloned = time.monotonic() - started
            remove_clone(tree)
            print(f"saving paused with the clone:    {cloned:8.2f} s (clone_tree)")
            drop_caches()
            started = time.monotonic()
            sink = DevNull()
            result = write_archive(server, sink, rules)  # type: ignore[arg-type]
            sink.close()
            read = time.monotonic() - started
            print(f"saving paused without the clone: {read:8.2f} s (write_archive, "
                  f"{result.bytes_read / read / MIB:.0f} MiB/s)")
            print(f"ratio: {read / cloned:.0f}x shorter with the clone")
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
