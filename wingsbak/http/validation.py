"""Input checks that run before any file system access."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

from aiohttp import web

from wingsbak.appkeys import CONFIG
from wingsbak.errors import BadRequest, NotFound, PayloadTooLarge
from wingsbak.log import get_logger
from wingsbak.uuids import is_uuid

log = get_logger(__name__)


def require_uuid(value: object, what: str) -> str:
    """A canonical lower-case UUID, or 400."""
    if not is_uuid(value):
        raise BadRequest(f"The {what} identifier is not a valid UUID.")
    return value  # type: ignore[return-value]


def path_uuid(request: web.Request, name: str, what: str) -> str:
    return require_uuid(request.match_info.get(name), what)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge("The request body is too large.") from exc
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deeply nested JSON
        raise BadRequest("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _server_root_kind(path: Path) -> str:
    """Either "dir", "missing", or what else it is. lstat: a server directory that is a symlink is
    never followed (a backup or restore through <data>/<uuid> -> /etc would read or write
    /etc)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "missing"
    if stat.S_ISDIR(mode):
        return "dir"
    return "a symlink" if stat.S_ISLNK(mode) else "not a directory"


async def server_root_or_404(request: web.Request, server: str) -> None:
    root = request.app[CONFIG].data_dir / server
    kind = await asyncio.to_thread(_server_root_kind, root)
    if kind == "missing":
        raise NotFound("The requested server does not exist on this node.")
    if kind != "dir":
        log.warning("server_directory_refused", server=server, reason=f"it is {kind}")
        raise NotFound(f"The requested server's directory is {kind}, which is never followed.")


def optional_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)  # some panels send the ignore lines as a list
    if not isinstance(value, str):
        raise BadRequest(f"The '{key}' field must be a string.")
    return value
