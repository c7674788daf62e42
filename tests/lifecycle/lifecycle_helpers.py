"""wingsbak as a process in front of a Wings stand-in of either flavour, and what the tests
ask of it as the panel would."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml

from tests.support.daemon_helpers import (
    NODE_TOKEN,
    DaemonProcess,
    Node,
    Panel,
    auth,
    download_claims,
    new_uuid,
    sign,
    wait_until,
)
from tests.support.s3_helpers import s3_config
from tests.support.wings_standin import WingsStandin

PASSWORD = "correct horse battery staple"


def in_front(
    make: Callable[..., DaemonProcess],
    node: Node,
    wings: WingsStandin,
    panel: Panel,
    flavour: str,
    *,
    remove_backups_on_server_delete: bool | None = None,
    api: dict[str, Any] | None = None,
    **backups: Any,
) -> DaemonProcess:
    """A daemon process (not started) in front of ``wings`` playing ``flavour``, naming a Wings
    file that holds ``remove_backups_on_server_delete`` (left out when None: Wings' default)."""
    wings.flavour = flavour
    if remove_backups_on_server_delete is not None:
        wings.lifecycle.remove_backups_on_server_delete = remove_backups_on_server_delete
    proc = make(remote=panel.url, **backups)
    proc.config["api"].update({"upstream": wings.url, **(api or {})})
    wings_backups: dict[str, Any] = {}
    if remove_backups_on_server_delete is not None:
        wings_backups["remove_backups_on_server_delete"] = remove_backups_on_server_delete
    wings_file = node.root / "wings-config.yml"
    system = {"backup_directory": str(node.backups), "backups": wings_backups}
    wings_file.write_text(yaml.safe_dump({"system": system}), encoding="utf-8")
    proc.config["wings_config"] = str(wings_file)
    return proc


def s3_backups(endpoint: str, bucket: str) -> dict[str, Any]:
    return {"store": "s3", "s3": dataclasses.asdict(s3_config(endpoint, bucket))}


def restic_backups(tmp: Path) -> dict[str, Any]:
    password = tmp / "restic-password"
    password.write_text(PASSWORD + "\n")
    return {
        "store": "restic",
        "restic": {"repository": str(tmp / "repo"), "password_file": str(password)},
    }


def restic_snapshots(backups: dict[str, Any], *tags: str) -> list[dict[str, Any]]:
    """restic itself, on the daemon's repository: the snapshots with all ``tags``."""
    block = backups["restic"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(
        RESTIC_REPOSITORY=block["repository"],
        RESTIC_PASSWORD_FILE=block["password_file"],
        RESTIC_CACHE_DIR=str(Path(block["password_file"]).parent / "oracle-cache"),
    )
    args = ["restic", "snapshots", "--json", "--no-lock", "--tag", ",".join(tags)]
    done = subprocess.run(args, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or b"[]") or []


async def backed_up(proc: DaemonProcess, panel: Panel, server: str) -> str:
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    report = await panel.wait_report(backup, timeout=60)
    assert report.json["successful"] is True, proc.logs()
    return backup


async def call(
    proc: DaemonProcess, method: str, path: str, body: Any = None, token: str = NODE_TOKEN
) -> tuple[int, Any]:
    """A request with the bearer, as the panel's daemon client sends it."""
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, proc.url + path, json=body, headers=auth(token)) as r,
    ):
        text = await r.text()
        return r.status, json.loads(text) if text else None


async def download(proc: DaemonProcess, server: str, backup: str) -> tuple[int, bytes]:
    token = sign(download_claims(server, backup))
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proc.url}/download/backup", params={"token": token}) as r,
    ):
        return r.status, await r.read()


def transfer_token(server: str, key: str = NODE_TOKEN) -> str:
    """The JWT the panel gives the old node for the new one (pelican-dev/panel
    TransferServerService: NodeJWTService with the new node's token, subject the server,
    scope ``transfer``, 15 minutes)."""
    now = int(time.time())
    claims = {"sub": server, "scope": "transfer", "iat": now, "nbf": now - 300, "exp": now + 900}
    return jwt.encode(claims, key, algorithm="HS256")


def archive_of(files: dict[str, bytes]) -> bytes:
    """A .tar.gz holding ``files``, as a backup of them would."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def log_text(proc: DaemonProcess) -> str:
    return proc.log_path.read_text(encoding="utf-8", errors="replace")


def log_events(proc: DaemonProcess, event: str, **fields: Any) -> list[dict[str, Any]]:
    """The daemon's JSON log lines of ``event`` that carry ``fields``."""
    found = []
    for line in log_text(proc).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
            found.append(entry)
    return found


async def logged(
    proc: DaemonProcess, event: str, count: int = 1, timeout: float = 30.0, **fields: Any
) -> dict[str, Any]:
    """Wait until the daemon has logged ``event`` (with ``fields``) ``count`` times; the last."""
    await wait_until(
        lambda: len(log_events(proc, event, **fields)) >= count, f"{event} logged", timeout
    )
    return log_events(proc, event, **fields)[-1]
