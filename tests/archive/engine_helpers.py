"""Helpers shared by the archive engine tests: real tools (GNU tar, git) as oracles."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from wingsbak.archive import ArchiveResult, IgnoreRules, archive_to_file, write_archive


class MemorySink:
    """A sink that keeps the archive bytes in memory."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data: bytes | memoryview, /) -> int:
        return self.buf.write(data)

    def getvalue(self) -> bytes:
        return self.buf.getvalue()


def archive_bytes(
    root: str | os.PathLike[str], rules: IgnoreRules | None = None, **opts: object
) -> tuple[bytes, ArchiveResult]:
    """``(archive bytes, result)`` of ``root`` written into memory."""
    sink = MemorySink()
    result = write_archive(root, sink, rules, **opts)  # type: ignore[arg-type]
    return sink.getvalue(), result


def archive_file(
    root: str | os.PathLike[str],
    out: Path,
    rules: IgnoreRules | None = None,
    **opts: object,
) -> ArchiveResult:
    return archive_to_file(root, out, rules, **opts)


def gnu_tar_names(archive: Path | bytes) -> list[bytes]:
    """Member names as GNU tar lists them (raw bytes, no quoting)."""
    if isinstance(archive, Path):
        args, data = ["tar", "--quoting-style=literal", "-tzf", str(archive)], None
    else:
        args, data = ["tar", "--quoting-style=literal", "-tzf", "-"], archive
    out = subprocess.run(args, input=data, check=True, capture_output=True).stdout
    return [line for line in out.split(b"\n") if line]


def gzip_test(archive: Path | bytes) -> None:
    """``gzip -t``: raises CalledProcessError if the stream is not valid gzip."""
    if isinstance(archive, Path):
        subprocess.run(["gzip", "-t", str(archive)], check=True, capture_output=True)
    else:
        subprocess.run(["gzip", "-t"], input=archive, check=True, capture_output=True)


def gnu_extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "-xzf", str(archive), "-C", str(dest), "--same-permissions", "--numeric-owner"],
        check=True,
        capture_output=True,
    )


Snapshot = dict[bytes, tuple[object, ...]]


def snapshot(root: str | os.PathLike[str]) -> Snapshot:
    """Every entry under ``root`` (not ``root`` itself), keyed by its relative bytes path:
    kind, permission bits, mtime and content digest (files) or target (symlinks)."""
    base = os.fsencode(root)
    snap: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    digest = hashlib.file_digest(f, "sha1").hexdigest()
                snap[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime), digest)
    return snap


def tarfile_members(archive: Path | bytes) -> dict[str, tarfile.TarInfo]:
    fileobj = None if isinstance(archive, Path) else io.BytesIO(archive)
    name = archive if isinstance(archive, Path) else None
    with tarfile.open(name=name, fileobj=fileobj, mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}
