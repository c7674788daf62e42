"""A restic snapshot browsed with restic's own commands: ``restic ls --json`` once for the
tree (parsed and kept), ``restic dump SNAPSHOT PATH`` streamed for a file's content.

The repository, its password and environment come from the node's restic store
(:class:`wingsbak.storage.restic.ResticStore`), whose shared hold on the repository is kept
while a command runs, so a prune never removes what is being read. Every method blocks
(call it from a worker thread): the child process is read and waited for there, and stopped
(SIGINT, then killed) when the reader is closed early.

``restic ls --json`` does not give a symlink's target (cmd_ls.go: ``json:"-"``): it is read
when asked for (a stat of the link, or a walk for a restore) from the links alone restored
by ``restic restore --include``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import IO, Any, Protocol

from wingsbak.browse.model import Entry, EntryKind, NotADirectory, NotFound, Readable


class Repository(Protocol):
    """What a view asks of the restic store (:class:`wingsbak.storage.restic.ResticStore`,
    which makes the views: this module does not import it back)."""

    def use(self) -> AbstractContextManager[None]: ...

    def spawn(self, *args: str) -> Any: ...

    def run(self, *args: str) -> bytes: ...

__all__ = ["ResticView"]

# Go's os.FileMode keeps the special bits apart from the permission bits.
_GO_SETUID, _GO_SETGID, _GO_STICKY = 1 << 23, 1 << 22, 1 << 20
_KINDS: dict[str, EntryKind] = {"file": "file", "dir": "dir", "symlink": "symlink"}
_TIME = re.compile(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")
_READ = 1024 * 1024


def _mode(go_mode: int) -> int:
    mode = go_mode & 0o777
    if go_mode & _GO_SETUID:
        mode |= 0o4000
    if go_mode & _GO_SETGID:
        mode |= 0o2000
    if go_mode & _GO_STICKY:
        mode |= 0o1000
    return mode


def _mtime(text: str) -> float:
    """An RFC 3339 time with up to nanoseconds (Go's), in seconds since the epoch."""
    match = _TIME.match(text or "")
    if match is None:
        return 0.0
    whole, fraction, zone = match.groups()
    try:
        seconds = datetime.fromisoformat(whole + zone.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _entry(node: dict[str, Any]) -> Entry | None:
    path = str(node.get("path", "")).strip("/")
    if not path or ".." in path.split("/"):
        return None
    kind = _KINDS.get(str(node.get("type")), "other")
    return Entry(
        path=path,
        kind=kind,
        size=int(node.get("size") or 0) if kind == "file" else 0,
        mode=_mode(int(node.get("mode") or 0)),
        mtime=_mtime(str(node.get("mtime", ""))),
    )


class _Dump:
    """A file's content from ``restic dump``'s stdout; restic's failure is raised at the end
    of the stream, never taken for a short file."""

    def __init__(self, process: Any, path: str) -> None:
        self.process = process
        self.path = path
        self.stdout: IO[bytes] = process.stdout
        self.ended = False

    def read(self, n: int = -1, /) -> bytes:
        if self.ended:
            return b""
        if n < 0:
            return b"".join(iter(lambda: self.read(_READ), b""))
        data = self.stdout.read(n)
        if not data:
            self.ended = True
            rc = self.process.wait()
            if rc != 0:
                raise self.process.error(rc)
        return data


class ResticView:
    """A BackupView of one snapshot of ``store``'s repository."""

    def __init__(self, store: Repository, snapshot: str) -> None:
        self.store = store
        self.snapshot = snapshot
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] | None = None
        self._children: dict[str, list[Entry]] = {}
        self._links: dict[str, str] = {}  # a symlink's path -> its target

    def _tree(self) -> dict[str, Entry]:
        with self._lock:
            if self._entries is None:
                self._entries, self._children = self._list()
            return self._entries

    def _list(self) -> tuple[dict[str, Entry], dict[str, list[Entry]]]:
        entries: dict[str, Entry] = {}
        with self.store.use():
            p = self.store.spawn("ls", "--json", "--no-lock", self.snapshot)
            try:
                for line in p.stdout:
                    try:
                        node = json.loads(line)
                    except ValueError:
                        continue
                    if node.get("struct_type") != "node":
                        continue
                    entry = _entry(node)
                    if entry is not None:
                        entries[entry.path] = entry
                rc = p.wait()
            finally:
                p.close()
            if rc != 0:
                raise p.error(rc)
        children: dict[str, list[Entry]] = {"": []}
        for path, entry in entries.items():
            parent = path.rpartition("/")[0]
            children.setdefault(parent, []).append(entry)
        for listing in children.values():
            listing.sort(key=lambda e: e.name.encode("utf-8", "surrogateescape"))
        return entries, children

    def _stat(self, path: str) -> Entry:
        key = path.strip("/")
        tree = self._tree()
        if not key:
            return Entry("", "dir", 0, 0o755, 0.0)
        entry = tree.get(key)
        if entry is None:
            raise NotFound(path)
        return entry

    def stat(self, path: str) -> Entry:
        entry = self._stat(path)
        return self._with_targets([entry])[0] if entry.kind == "symlink" else entry

    def _with_targets(self, entries: list[Entry]) -> list[Entry]:
        """Symlinks given their targets, which ``restic ls --json`` leaves out: restored
        (only them) by one ``restic restore --include ...`` into a private folder, and read
        there with readlink, never followed."""
        wanted = [e.path for e in entries if e.kind == "symlink" and e.path not in self._links]
        if wanted:
            with tempfile.TemporaryDirectory(prefix="wingsbak-links-") as tmp:
                includes = [arg for p in wanted for arg in ("--include", "/" + p)]
                with self.store.use():
                    self.store.run("restore", self.snapshot, "--target", tmp, *includes)
                for p in wanted:
                    try:
                        self._links[p] = os.readlink(os.path.join(tmp, p))
                    except OSError:
                        self._links[p] = ""
        links = self._links
        return [
            dataclasses.replace(e, linkname=links.get(e.path, "")) if e.kind == "symlink" else e
            for e in entries
        ]

    def listdir(self, path: str) -> list[Entry]:
        entry = self._stat(path)
        if entry.kind != "dir":
            raise NotADirectory(path)
        return self._with_targets(list(self._children.get(entry.path, [])))

    def walk(self, path: str) -> Iterator[Entry]:
        yield from self._with_targets(list(self._below(self._stat(path))))

    def _below(self, top: Entry) -> Iterator[Entry]:
        yield top
        if top.kind == "dir":
            for child in self._children.get(top.path, []):
                yield from self._below(child)

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[Readable]:
        entry = self.stat(path)
        if entry.kind != "file":
            raise IsADirectoryError(path)
        with self.store.use():
            p = self.store.spawn("dump", self.snapshot, "/" + entry.path)
            try:
                yield _Dump(p, entry.path)
            finally:
                p.close()

