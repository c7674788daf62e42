"""Helpers for the restore tests: crafted archives, tree snapshots, and the handlers that
serve archives at download URLs (the ``serve`` fixture of conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]
"""``await serve(handler)`` -> the URL of a fresh server on 127.0.0.1 answering ``handler``."""


def serves(body: bytes, content_type: str = "application/x-gzip") -> Handler:
    """A handler answering ``body``."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    return handler


def breaks_half_way(body: bytes) -> Handler:
    """A handler that promises ``body`` and closes the connection after sending half of it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()  # the connection dies with half the promised bytes sent
        return resp

    return handler


def serves_chunked(body: bytes) -> Handler:
    """A handler answering ``body`` in chunked encoding: no Content-Length to check it by."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for at in range(0, len(body), 64 * 1024):
            await resp.write(body[at : at + 64 * 1024])
        await resp.write_eof()
        return resp

    return handler


def trickles(body: bytes, head: int, rate: float = 1.0) -> tuple[Handler, asyncio.Event]:
    """A handler sending the first ``head`` bytes of ``body`` at once, then one byte every
    ``1/rate`` seconds (no Content-Length), and the event it sets once the head is sent."""
    sent = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return web.Response()  # HEAD: an S3 client checking its bucket
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(body[:head])
        sent.set()
        for at in range(head, len(body)):
            await asyncio.sleep(1 / rate)
            await resp.write(body[at : at + 1])
        await resp.write_eof()
        return resp

    return handler, sent


def restore_leftovers(root: Path) -> list[str]:
    """Anything of a restore's own left in a server root."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".wingsbak-restore-"))


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[object, ...]]:
    """Everything about a tree a restore promises to keep: type, mode, mtime, content, target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), int(st.st_mtime))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(mode), int(st.st_mtime))
            else:
                digest = hashlib.sha1(path.read_bytes()).hexdigest()
                out[rel] = ("file", oct(mode), int(st.st_mtime), digest, st.st_nlink)
    return out


class Crafted:
    """A ``.tar.gz`` built entry by entry with ``tarfile``, whatever the entries say."""

    def __init__(self, path: Path, fmt: int = tarfile.PAX_FORMAT) -> None:
        self.path = path
        self.tar = tarfile.open(path, "w:gz", format=fmt)  # noqa: SIM115 - closed by close()

    def file(self, name: str, data: bytes = b"data", mode: int = 0o644) -> Crafted:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = 1_600_000_000
        self.tar.addfile(info, io.BytesIO(data))
        return self

    def dir(self, name: str, mode: int = 0o755) -> Crafted:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self.tar.addfile(info)
        return self

    def link(self, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Crafted:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        self.tar.addfile(info)
        return self

    def node(self, name: str, kind: bytes) -> Crafted:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.devmajor, info.devminor = 1, 3
        self.tar.addfile(info)
        return self

    def close(self) -> Path:
        self.tar.close()
        return self.path
