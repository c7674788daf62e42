"""The server's backups as a read-only folder of the panel's file manager (``.backups``,
``system.backups.browse_folder``; empty: off), on Wings' own file routes
(router/router_server_files.go, router/router_download.go): a request that touches that folder
is answered here and never reaches Wings; any other goes to Wings unchanged.

- ``list-directory`` of the root gains the folder; inside it, one folder per backup
  (:class:`~wingsbak.browse.model.BackupFolder`), then the backup's own tree, in the shape of
  Wings' filesystem/stat.go.
- ``files/contents`` and ``/download/file?token=`` (the token checked as a file link is, one
  use) read a file of a backup; a symlink is never followed.
- ``PUT files/rename`` from a backup to a real path restores that path there
  (wingsbak.browse.restore); ``POST files/copy`` restores a file beside its live
  counterpart, named as Wings names copies (filesystem.go ``Copy``), never overwriting.
- Whatever would write inside the folder (write, delete, create-directory, chmod, compress,
  decompress, pull, upload, a rename into it) is refused with Wings' error shape (403, as
  Wings refuses a denylisted file: router/middleware/request_error.go).

Paths are cleaned as Wings cleans them (``..`` stops at the root), so no spelling reaches a
backup's files from outside the folder or leaves it. A server with a real entry of that name
keeps it: everything passes to Wings, and a warning is logged once.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import posixpath
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from aiohttp import hdrs, web
from yarl import URL

from wingsbak import failpoint
from wingsbak.answers import check_bearer
from wingsbak.appkeys import BROWSE_TEMPS, CATALOG, CONFIG, JOBS, USED_TOKENS
from wingsbak.archive.rules import IgnoreRules
from wingsbak.browse.catalog import Catalog, Unopenable
from wingsbak.browse.model import BackupFolder, BackupView, Entry, NotADirectory, NotFound
from wingsbak.browse.restore import (
    Exists,
    free_copy_name,
    restore_path,
    size_on_disk,
    size_to_restore,
)
from wingsbak.errors import TokenRejected
from wingsbak.log import get_logger
from wingsbak.tokens import decode_token
from wingsbak.uuids import is_uuid
from wingsbak.wings import gojson
from wingsbak.wings.client import WINGS, WingsError
from wingsbak.wings.hold import decoded
from wingsbak.wings.identity import IDENTITY
from wingsbak.wings.proxy import (
    CONTINUE_OWED,
    end_to_end,
    forward,
    forwarded_headers,
    owe_continue,
    send_continue,
    target,
)

log = get_logger(__name__)

CHUNK = 1024 * 1024
READ_ONLY = "This file cannot be modified: {} is a read-only view of the server's backups."
NOT_FOUND = "The requested resources was not found on the system."  # request_error.go
IS_DIR = "Cannot perform that action: file is a directory."
RESTORING = "The server is being restored from a backup."
EXISTS = "Cannot move or rename file, destination already exists."  # putServerRenameFiles
DENYLISTED = "This file cannot be modified: present in egg denylist."  # request_error.go
TOO_LONG = "Cannot perform that action: file name is too long."  # request_error.go
UNREADABLE = "The request body is not a JSON object Wings can read."
NO_SPACE = "There is not enough disk space available to perform that action."  # request_error.go
_warned: set[str] = set()

# Opening a backup waits on its store (an index built in one pass, restic, a bucket, a
# mount) and a restore copies whole folders: on threads of their own, so that however many
# clicks wait there, the daemon's shared pool (reports, deletes, backups) keeps its threads.
BROWSE_THREADS = 4
# How long the root listing waits for the stores' backups (only the folder's time needs
# them): a store that does not answer must not hold the file manager of every server.
ROOT_WAIT = 2.0
_pool = ThreadPoolExecutor(max_workers=BROWSE_THREADS, thread_name_prefix="wingsbak-browse")


async def _run(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(
        _pool, functools.partial(fn, *args, **kw)
    )


def folder_name(request: web.Request) -> str:
    return request.app[CONFIG].system.backups.browse_folder


def clean(*parts: str) -> list[str]:
    """A path as Wings' SafePath reads it: joined, ``..`` stopping at the root, as components."""
    joined = posixpath.normpath("/" + "/".join(parts))
    return [p for p in joined.split("/") if p]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "request_id": str(uuid.uuid4())}, status=status)


# -- the listing shape (filesystem/stat.go) -------------------------------------------------------

_TEXT = {"txt", "log", "properties", "yml", "yaml", "toml", "ini", "cfg", "conf", "md", "sh",
         "csv", "xml", "html", "js", "lua", "py", "mcmeta", "secret", "env", "sk", "lang"}
_MIME = {"json": "application/json", "gz": "application/gzip", "tgz": "application/gzip",
         "zip": "application/zip", "jar": "application/jar", "png": "image/png",
         "jpg": "image/jpeg", "jpeg": "image/jpeg", "dat": "application/octet-stream"}


def mime_of(entry: Entry) -> str:
    """Wings sniffs a file's first bytes (gabriel-vasile/mimetype); here, so that a listing
    reads no file, its name says it. The file manager opens for editing what is not
    ``application/octet-stream``."""
    if entry.kind == "dir":
        return "inode/directory"
    if entry.kind != "file":
        return "application/octet-stream"
    ext = entry.name.rpartition(".")[2].lower() if "." in entry.name else ""
    if ext in _MIME:
        return _MIME[ext]
    if ext in _TEXT or entry.size == 0:
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def go_time(seconds: float) -> str:
    """time.Format(time.RFC3339) of a time in the node's zone (Go's ``Local``)."""
    when = datetime.fromtimestamp(int(seconds)).astimezone()
    text = when.strftime("%Y-%m-%dT%H:%M:%S%z")
    return text[:-5] + "Z" if text.endswith("+0000") else text[:-2] + ":" + text[-2:]


def go_mode(kind: str, mode: int) -> str:
    """fs.FileMode.String(): type letter(s), then rwx for the nine permission bits."""
    head = {"dir": "d", "symlink": "L", "other": "p"}.get(kind, "")
    if mode & 0o4000:
        head += "u"
    if mode & 0o2000:
        head += "g"
    if mode & 0o1000:
        head += "t"
    bits = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return (head or "-") + bits


def stat_json(entry: Entry, name: str | None = None, mtime: float | None = None) -> dict[str, Any]:
    when = go_time(entry.mtime if mtime is None else mtime)
    return {
        "name": name if name is not None else entry.name,
        "created": when,  # a backup keeps no ctime: its mtime stands for it
        "modified": when,
        "mode": go_mode(entry.kind, entry.mode),
        "mode_bits": format(entry.mode & 0o777, "o"),
        "size": entry.size,
        "directory": entry.kind == "dir",
        "file": entry.kind != "dir",
        "symlink": entry.kind == "symlink",  # Pelican's stat.go (Mode().Type())
        "mime": mime_of(entry),
    }


def _sorted(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda s: (not s["directory"], s["name"]))


# -- where a request points ---------------------------------------------------------------------


class Place:
    """A path inside the folder: ``backup`` (None: the folder itself) and ``path`` in it."""

    def __init__(self, parts: list[str]) -> None:
        self.backup = parts[1] if len(parts) > 1 else None
        self.path = "/".join(parts[2:])


async def _active(request: web.Request, server: str) -> bool:
    """Whether the folder is shown for this server (not off, no real entry of its name)."""
    name = folder_name(request)
    if not name or not is_uuid(server) or WINGS not in request.app:
        return False
    real = request.app[CONFIG].data_dir / server / name
    if await asyncio.to_thread(os.path.lexists, real):
        _warn_real(server, name)
        return False
    return True


def _warn_real(server: str, name: str) -> None:
    if server not in _warned:
        _warned.add(server)
        log.warning("browse_folder_hidden_by_real_entry", server=server, name=name)


def _inside(request: web.Request, parts: list[str]) -> Place | None:
    name = folder_name(request)
    return Place(parts) if parts and parts[0] == name else None


async def _authorized(request: web.Request) -> None:
    check_bearer(request, request.app[CONFIG].token)


async def _body(request: web.Request) -> bytes | None:
    """The JSON body, read once the bearer is checked; None: Wings is to refuse it unread."""
    if request.get(CONTINUE_OWED, False):
        try:
            await _authorized(request)
        except Exception:
            return None
        await send_continue(request)
    return await request.read()


# The fields of Wings' file routes' bodies (router_server_files.go), as Go's decoder names them.
_FIELDS = dict.fromkeys(
    ("root", "files", "from", "to", "location", "file", "path", "name", "directory", "mode",
     "url", "file_name"),
    gojson.Kind.STRING,
)


def _go_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's keys as Go assigns them (wingsbak.wings.gojson): a key equal to a field
    under case folding sets it, the last one winning; ``null`` leaves it as it was."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        name = gojson.field_name(key, _FIELDS)
        if name is None:
            out[key] = value
        elif value is not None:
            out[name] = value
    return out


def _decoded(body: bytes) -> dict[str, Any] | None:
    """The body as Wings' BindJSON reads it: its first JSON value (what follows is never
    read), each byte that is not UTF-8 as U+FFFD, keys matched as Go matches them; so that
    no spelling Wings acts on is judged otherwise here."""
    text = body.decode("utf-8", "replace").lstrip(" \t\n\r")
    try:
        data, _end = json.JSONDecoder(object_pairs_hook=_go_fields).raw_decode(text)
    except (ValueError, RecursionError):  # Go reads deeper nesting: judged unreadable here
        return None
    return data if isinstance(data, dict) else None


async def _judged(request: web.Request) -> tuple[bytes | None, dict[str, Any] | None]:
    """The body and what Wings will read in it. A body not readable so (which Wings' own
    BindJSON refuses too, unless Go reads further than Python does) is answered here with a
    400, never passed on unjudged. None, None: Wings is to refuse it unread."""
    body = await _body(request)
    if body is None:
        return None, None
    data = await decoded(_decoded, body)
    if data is None:
        await _authorized(request)
        raise _Answer(_error(400, UNREADABLE))
    return body, data


async def _onward(
    request: web.Request, body: bytes | None, data: dict[str, Any] | None
) -> web.StreamResponse:
    """To Wings: what was judged here (``data``, the body as Wings reads it) written again,
    so that no reading of the bytes Wings might make can differ from the one judged; a body
    to be refused unread (None) goes as it came."""
    if body is None or data is None:
        return await forward(request, body)
    return await forward(request, json.dumps(data).encode(), rewritten=True)


# -- the backups ----------------------------------------------------------------------------------


def catalog(request: web.Request) -> Catalog:
    return request.app[CATALOG]


async def _folder(request: web.Request, server: str, name: str) -> BackupFolder | None:
    return await _run(catalog(request).folder, server, name)


async def _view(request: web.Request, folder: BackupFolder) -> BackupView:
    return await _run(catalog(request).view, folder)


class _Answer(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def _open(request: web.Request, server: str, place: Place) -> tuple[BackupFolder, BackupView]:
    assert place.backup is not None
    folder = await _folder(request, server, place.backup)
    if folder is None:
        raise _Answer(_error(404, NOT_FOUND))
    try:
        return folder, await _view(request, folder)
    except Unopenable as exc:
        raise _Answer(_error(501, str(exc))) from None


async def _stat(view: BackupView, path: str) -> Entry:
    try:
        return await _run(view.stat, path)
    except NotFound:
        raise _Answer(_error(404, NOT_FOUND)) from None


def _answers(handler: Callable[..., Any]) -> Callable[[web.Request], Any]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except _Answer as answer:
            return answer.response
        return response

    return wrapped


# -- list-directory and contents ------------------------------------------------------------------


@_answers
async def list_directory(request: web.Request) -> web.StreamResponse:
    server = request.match_info["server"]
    parts = clean(request.query.get("directory", ""))
    if not await _active(request, server):
        return await forward(request)
    if not parts:
        return await _root_listing(request, server)
    place = _inside(request, parts)
    if place is None:
        return await forward(request)
    await _authorized(request)
    if place.backup is None:
        folders = await _run(catalog(request).folders, server)
        shown = [
            stat_json(Entry(f.name, "dir", 0, 0o555, 0), f.name, f.created.timestamp())
            for f in reversed(folders)
        ]
        return web.json_response(shown)
    _f, view = await _open(request, server, place)
    try:
        entries = await _run(view.listdir, place.path)
    except NotFound:
        return _error(404, NOT_FOUND)
    except NotADirectory:
        return _error(404, "The requested directory does not exist.")
    return web.json_response(_sorted([stat_json(e) for e in entries]))


async def _root_listing(request: web.Request, server: str) -> web.StreamResponse:
    """Wings' listing of the root, with the folder added."""
    wings, identity = request.app[WINGS], request.app[IDENTITY]
    url = URL(wings.url(identity.path_for_wings(target(request))), encoded=True)
    headers = forwarded_headers(request)
    identity.headers_for_wings(headers)
    headers[hdrs.ACCEPT_ENCODING] = "identity"  # the answer is read and rewritten here
    async with wings.session.get(url, headers=headers, allow_redirects=False) as upstream:
        body = await upstream.read()
        wings_headers = end_to_end(upstream.headers)
        status = upstream.status
    answer_headers = wings_headers.copy()
    for name in (hdrs.CONTENT_LENGTH, hdrs.CONTENT_ENCODING, hdrs.CONTENT_TYPE):
        answer_headers.popall(name, None)
    listing = _listing(body) if status == 200 else None
    name = folder_name(request)
    if listing is None or any(item.get("name") == name for item in listing):
        if listing is not None:
            _warn_real(server, name)
        return web.Response(status=status, body=body, headers=wings_headers)
    try:  # the listing goes on finding them on its thread, and the next answer has them
        folders = await asyncio.wait_for(
            asyncio.shield(_run(catalog(request).folders, server)), ROOT_WAIT
        )
    except TimeoutError:
        log.warning("browse_root_listing_without_backups", server=server, waited=ROOT_WAIT)
        folders = []
    newest = folders[-1].created.timestamp() if folders else 0.0
    listing.append(stat_json(Entry(name, "dir", 0, 0o555, newest), name))
    return web.json_response(listing, headers=answer_headers)


def _listing(body: bytes) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, list) else None


@_answers
async def file_contents(request: web.Request) -> web.StreamResponse:
    server = request.match_info["server"]
    parts = clean(request.query.get("file", ""))
    place = _inside(request, parts)
    if place is None or not await _active(request, server):
        return await forward(request)
    await _authorized(request)
    if place.backup is None:
        return _error(400, IS_DIR)
    _f, view = await _open(request, server, place)
    entry = await _stat(view, place.path)
    headers = {"X-Mime-Type": mime_of(entry)}
    if request.query.get("download", ""):
        headers[hdrs.CONTENT_DISPOSITION] = "attachment; filename=" + json.dumps(entry.name)
        headers[hdrs.CONTENT_TYPE] = "application/octet-stream"
    return await _send(request, view, entry, headers)


async def _send(
    request: web.Request, view: BackupView, entry: Entry, headers: dict[str, str]
) -> web.StreamResponse:
    if entry.kind == "dir":
        return _error(400, IS_DIR)
    if entry.kind != "file":  # a symlink is never followed; nothing else has content
        return _error(400, "Cannot open files of this type.")
    opened = await _run(view.open, entry.path)
    src = await _run(opened.__enter__)
    try:
        response = web.StreamResponse(headers=headers)
        response.content_length = entry.size
        await response.prepare(request)
        while chunk := await _run(src.read, CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await _run(opened.__exit__, None, None, None)


async def download_file(request: web.Request) -> web.StreamResponse:
    """``GET /download/file?token=``: a link to a file in the folder is served here."""
    try:
        claims = decode_token(
            request.query.get("token", ""),
            request.app[CONFIG].token,
            ["server_uuid", "file_path", "unique_id"],
            scope="file-download",
        )
    except TokenRejected:
        return await forward(request)  # Wings' to refuse, as it does
    server = claims["server_uuid"]
    place = _inside(request, clean(claims["file_path"]))
    if place is None or place.backup is None or not await _active(request, server):
        return await forward(request)
    try:
        _f, view = await _open(request, server, place)
        entry = await _stat(view, place.path)
    except _Answer as answer:
        return answer.response
    if entry.kind != "file":
        return _error(404, "The requested resource was not found on this server.")
    used = request.app[USED_TOKENS]
    expires = float(claims["exp"])
    address = request.remote or ""
    fresh = await asyncio.to_thread(used.claim, claims["unique_id"], expires, address, 0)
    if not fresh:  # router_download.go: IsUniqueRequest
        return _error(404, "The requested resource was not found on this server.")
    headers = {
        hdrs.CONTENT_DISPOSITION: "attachment; filename=" + json.dumps(entry.name),
        hdrs.CONTENT_TYPE: "application/octet-stream",
    }
    log.info("browse_download", server=server, backup=place.backup, path=place.path)
    return await _send(request, view, entry, headers)


# -- restores: rename out of a backup, copy -------------------------------------------------------


async def _details(request: web.Request, server: str) -> dict[str, Any]:
    """Wings' ``GET /api/servers/{s}``: the server's disk limit and egg denylist."""
    try:
        return await request.app[WINGS].server_details(server)
    except WingsError as exc:
        log.warning("browse_restore_server_unknown", server=server, error=str(exc))
        unknown = "The server's configuration could not be read from Wings."
        raise _Answer(_error(502, unknown)) from None


def _configured(details: dict[str, Any], section: str, key: str) -> Any:
    config = details.get("configuration")
    part = config.get(section) if isinstance(config, dict) else None
    return part.get(key) if isinstance(part, dict) else None


def _deny(details: dict[str, Any], *paths: list[str]) -> None:
    """Wings refuses a rename or copy naming a path of the egg's ``file_denylist``
    (filesystem/path.go IsIgnored, matched on the path and so on everything below a listed
    one): a restore into one is refused alike, or a file could be put where the egg forbids."""
    lines = _configured(details, "egg", "file_denylist")
    if not isinstance(lines, list) or not lines:
        return
    rules = IgnoreRules(line for line in lines if isinstance(line, str))
    for parts in paths:
        for i in range(1, len(parts) + 1):
            if rules.excludes("/".join(parts[:i]), is_dir=i < len(parts)):
                raise _Answer(_error(403, DENYLISTED))


class _Room:
    """The server's disk limit against what one request's restores write, as Wings' own
    writes must fit it (filesystem.go Copy, HasSpaceFor; ufs/fs_quota.go CanFit: -1 no
    writes, 0 no limit). Wings' usage figure is cached for minutes, so the root is measured,
    once per request, then kept up to date with what each restore writes and frees."""

    def __init__(self, request: web.Request, server: str, details: dict[str, Any]) -> None:
        self.limit = _configured(details, "build", "disk_space")
        self.root = request.app[JOBS].server_root(server)
        self.used: int | None = None

    async def claim(self, view: BackupView, source: str, freed: list[str] | None) -> None:
        """Room for ``source`` of the backup, replacing the live path ``freed``; else 400."""
        limit = self.limit
        if not isinstance(limit, int) or limit == 0:
            return
        if limit < 0:
            raise _Answer(_error(400, NO_SPACE))

        def measure() -> int:
            used = self.used if self.used is not None else size_on_disk(self.root, [])
            gone = size_on_disk(self.root, freed) if freed else 0
            return used - gone + size_to_restore(view, source)

        after = await _run(measure)
        if after > limit * 1024 * 1024:
            raise _Answer(_error(400, NO_SPACE))
        self.used = after


def _write_refused(exc: OSError) -> web.Response:
    """Wings' answer to a restore's write that the file system refused; anything else is
    raised again."""
    if exc.errno == errno.ENAMETOOLONG:
        return _error(400, TOO_LONG)
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        # A symlink (or a file) on the way: never written through (SafePath's 404).
        return _error(404, NOT_FOUND)
    raise exc


def _owner(request: web.Request) -> tuple[int, int] | None:
    user = request.app[CONFIG].system.user
    return (user.uid, user.gid) if os.geteuid() == 0 else None


@_answers
async def rename(request: web.Request) -> web.StreamResponse:
    server = request.match_info["server"]
    if not await _active(request, server):
        return await forward(request)
    body, data = await _judged(request)
    files = data.get("files") if data is not None else None
    if body is None or not isinstance(files, list):
        return await _onward(request, body, data)
    root = data.get("root") if isinstance(data.get("root"), str) else ""  # type: ignore[union-attr]
    ours, theirs = [], []
    for item in files:
        pair = item if isinstance(item, dict) else {}
        src, dst = (clean(root, str(pair.get(k) or "")) for k in ("from", "to"))
        if _inside(request, dst) is not None:
            await _authorized(request)
            return _error(403, READ_ONLY.format(folder_name(request)))
        (ours if _inside(request, src) is not None else theirs).append((item, src, dst))
    if not ours:
        return await _onward(request, body, data)
    await _authorized(request)
    if request.app[JOBS].is_restoring(server):
        return _error(409, RESTORING)
    # One at a time per server; a full restore waits (409) meanwhile.
    async with request.app[JOBS].restoring_paths(server):
        await failpoint.reached("browse-restore-started")
        details = await _details(request, server)
        room = _Room(request, server, details)
        for _item, src, dst in ours:
            place = Place(src)
            if place.backup is None or not dst:
                return _error(403, READ_ONLY.format(folder_name(request)))
            if any("\x00" in part for part in dst):  # no file can be named so (Go: EINVAL)
                return _error(400, "Cannot perform that action: the name holds a NUL byte.")
            _deny(details, src, dst)
            _f, view = await _open(request, server, place)
            try:
                await _stat(view, place.path)
            except _Answer:
                log.warning("browse_restore_not_found", server=server, path="/".join(src))
                continue  # putServerRenameFiles: a source that does not exist is no error
            await room.claim(view, place.path, dst)
            dest = request.app[JOBS].server_root(server)
            try:
                done = await _run(
                    restore_path,
                    view,
                    place.path,
                    dest,
                    dst,
                    owner=_owner(request),
                    pending=request.app[BROWSE_TEMPS],
                )
            except Exists:
                return _error(400, EXISTS)
            except OSError as exc:
                return _write_refused(exc)
            log.info("browse_restored", server=server, backup=place.backup, path=place.path,
                     to="/".join(dst), files=done.files, folders=done.folders)
    if theirs:
        rest = {**data, "files": [item for item, _s, _d in theirs]}  # type: ignore[dict-item]
        return await _onward(request, body, rest)
    return web.Response(status=204)


def copy_names(name: str) -> list[str]:
    """filesystem.go Copy/findCopySuffix: ``name copy.ext``, ``name copy 1.ext``... (``.tar``
    kept with the extension), then the last resort Wings gives after 50."""
    dot = name.rfind(".")
    ext = name[dot:] if dot >= 0 else ""  # filepath.Ext
    base = name[: len(name) - len(ext)]
    if base.endswith(".tar"):
        ext, base = ".tar" + ext, base[:-4]
    names = [f"{base} copy{ext}"] + [f"{base} copy {i}{ext}" for i in range(1, 51)]
    stamp = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    return [*names, f"{base}copy.{stamp}{ext}"]


@_answers
async def copy(request: web.Request) -> web.StreamResponse:
    server = request.match_info["server"]
    if not await _active(request, server):
        return await forward(request)
    body, data = await _judged(request)
    location = data.get("location") if data is not None else None
    parts = clean(location) if isinstance(location, str) else []
    place = _inside(request, parts)
    if body is None or place is None:
        return await _onward(request, body, data)
    await _authorized(request)
    if place.backup is None or not place.path:
        return _error(404, NOT_FOUND)
    if request.app[JOBS].is_restoring(server):
        return _error(409, RESTORING)
    _f, view = await _open(request, server, place)
    entry = await _stat(view, place.path)
    if entry.kind != "file":  # Copy: "a directory or not a regular file" is ErrNotExist
        return _error(404, NOT_FOUND)
    live = place.path.split("/")[:-1]
    details = await _details(request, server)
    _deny(details, parts, place.path.split("/"))
    dest = request.app[JOBS].server_root(server)
    owner = _owner(request)

    def run() -> str:
        while True:
            name = free_copy_name(dest, live, copy_names(entry.name), owner)
            try:
                restore_path(
                    view,
                    entry.path,
                    dest,
                    [*live, name],
                    owner=owner,
                    overwrite=False,
                    pending=request.app[BROWSE_TEMPS],
                )
            except Exists:
                continue  # taken meanwhile: the next free name
            return name

    if request.app[JOBS].is_restoring(server):  # again: one may have started meanwhile
        return _error(409, RESTORING)
    try:
        # One at a time per server (the room measured is the room written into); a full
        # restore waits (409) meanwhile.
        async with request.app[JOBS].restoring_paths(server):
            await _Room(request, server, details).claim(view, entry.path, None)
            name = await _run(run)
    except OSError as exc:
        return _write_refused(exc)
    log.info("browse_copied", server=server, backup=place.backup, path=place.path, name=name)
    return web.Response(status=204)


# -- refused writes -------------------------------------------------------------------------------


def _targets(route: str, query: Any, data: dict[str, Any] | None) -> list[list[str]]:
    """The paths a writing request touches (router_server_files.go's fields)."""
    d = data or {}

    def s(key: str) -> str:
        value = d.get(key)
        return value if isinstance(value, str) else ""

    def many(key: str) -> list[Any]:
        value = d.get(key)
        return value if isinstance(value, list) else []

    if route == "write":
        return [clean(query.get("file", ""))]
    if route == "create-directory":
        return [clean(s("path"), s("name")), clean(s("path"))]
    if route in ("delete", "compress"):
        return [clean(s("root"))] + [clean(s("root"), str(f)) for f in many("files")]
    if route == "decompress":
        return [clean(s("root")), clean(s("root"), s("file"))]
    if route == "chmod":
        files = [f.get("file", "") if isinstance(f, dict) else "" for f in many("files")]
        return [clean(s("root"), str(f)) for f in files] or [clean(s("root"))]
    if route == "pull":  # the downloader writes root/file_name (downloader.go; not directory)
        return [clean(s("directory")), clean(s("root")), clean(s("root"), s("file_name"))]
    return []


def _touches(request: web.Request, paths: list[list[str]]) -> bool:
    return any(_inside(request, parts) is not None for parts in paths)


def _refusing(route: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        server = request.match_info["server"]
        if not await _active(request, server):
            return await forward(request)
        if route == "write":
            if not _touches(request, _targets(route, request.query, None)):
                return await forward(request)
            await _authorized(request)
            return _error(403, READ_ONLY.format(folder_name(request)))
        body, data = await _judged(request)
        if body is None or not _touches(request, _targets(route, {}, data)):
            return await _onward(request, body, data)
        await _authorized(request)
        log.info("browse_write_refused", server=server, route=route)
        return _error(403, READ_ONLY.format(folder_name(request)))

    return _answers(handler)


async def upload_file(request: web.Request) -> web.StreamResponse:
    """``POST /upload/file?token=&directory=``: into the folder, refused before the body."""
    try:
        claims = decode_token(
            request.query.get("token", ""), request.app[CONFIG].token, ["server_uuid"]
        )
    except TokenRejected:
        return await forward(request)
    parts = clean(request.query.get("directory", ""))
    if _inside(request, parts) is None or not await _active(request, claims["server_uuid"]):
        return await forward(request)
    return _error(403, READ_ONLY.format(folder_name(request)))


def add_routes(app: web.Application) -> None:
    """Wings' file routes, before the pass-through's catch-all (wingsbak.wings.proxy)."""
    files = "/api/servers/{server}/files/"
    routes: list[tuple[str, str, Any]] = [
        ("GET", files + "list-directory", list_directory),
        ("GET", files + "contents", file_contents),
        ("PUT", files + "rename", rename),
        ("POST", files + "copy", copy),
        ("GET", "/download/file", download_file),
        ("POST", "/upload/file", upload_file),
    ]
    for route in ("write", "create-directory", "delete", "compress", "decompress", "chmod", "pull"):
        routes.append(("POST", files + route, _refusing(route)))
    for i, (method, path, handler) in enumerate(routes):
        # Named "wings-*": the node token is Wings' to check unless the answer is ours.
        app.router.add_route(
            method, path, handler, name=f"wings-browse-r{i}", expect_handler=owe_continue
        )
