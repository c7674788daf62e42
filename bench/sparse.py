"""A sparse file's backup and restore: ``wingsbak archive`` and ``wingsbak restore`` of a
10 GiB file holding 3 MiB of data (1 MiB at its start, middle and end), against GNU
``tar --format=posix -S``.

    python -m bench.sparse [--gib 10] [--code DIR]

``--code DIR`` runs the wingsbak of another tree (e.g. a checkout of an older commit) for a
before/after comparison. Prints the backup's wall seconds, the archive's size, the restored
file's disk usage (``du``) and whether it matches the source (``cmp``), then the same for
GNU tar; exits non-zero when a restored file differs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB


def make_sparse(path: Path, size: int) -> None:
    """``size`` bytes: 1 MiB of data at the start, the middle and the end, holes between."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 2, size - MIB):
            f.seek(offset)
            f.write(os.urandom(MIB))


def du_kib(path: Path) -> int:
    out = subprocess.run(["du", "-sk", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    # cwd: "python -m" puts it before PYTHONPATH, so it must not hold another wingsbak.
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
    return time.perf_counter() - start


def same(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", default=10.0, type=float, help="the file's size in GiB")
    ap.add_argument("--code", help="the tree whose wingsbak to run (default: this one)")
    ap.add_argument("--dir", help="where to work (default: a temporary directory)")
    args = ap.parse_args(argv)
    code = Path(args.code or Path(__file__).resolve().parent.parent).resolve()
    env = {**os.environ, "PYTHONPATH": str(code)}
    wingsbak = [sys.executable, "-m", "wingsbak"]
    work = Path(tempfile.mkdtemp(prefix="wingsbak-sparse-", dir=args.dir))
    failed = False
    try:
        src = work / "src"
        src.mkdir()
        make_sparse(src / "disk.img", int(args.gib * GIB))
        print(f"source: {args.gib:g} GiB file, {du_kib(src):,} KiB on disk; code {code}")
        runs = [
            (
                "wingsbak",
                [*wingsbak, "archive", str(src), "-o", str(work / "w.tar.gz")],
                [*wingsbak, "restore", str(work / "w.tar.gz"), str(work / "w")],
                work / "w.tar.gz",
                work / "w",
            ),
            (
                "GNU tar -S",
                ["tar", "--format=posix", "-SC", str(src), "-czf", str(work / "t.tar.gz"), "."],
                ["tar", "-xSzf", str(work / "t.tar.gz"), "-C", str(work / "t")],
                work / "t.tar.gz",
                work / "t",
            ),
        ]
        for name, backup, restore, archive, dest in runs:
            dest.mkdir()
            backup_s = timed(backup, env, work)
            restore_s = timed(restore, env, work)
            ok = same(src / "disk.img", dest / "disk.img")
            failed |= not ok
            print(
                f"{name:10}  backup {backup_s:7.2f} s  archive {archive.stat().st_size:>12,} B"
                f"  restore {restore_s:7.2f} s  restored on disk {du_kib(dest):>10,} KiB"
                f"  {'same' if ok else 'DIFFERENT'}"
            )
            shutil.rmtree(dest)
            archive.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
