"""Helpers of the daemon tests (shared with the event, storage and fault suites): the panel
stand-in (panel_standin.py, re-exported here), the node layout, daemon handles, JWTs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from aiohttp import web
from yarl import URL

from tests.support.panel_standin import (  # noqa: F401 - re-exported: the suites import them from here
    ACCEPT,
    NODE_TOKEN,
    PELICAN,
    PTERODACTYL,
    TOKEN_ID,
    Panel,
    Recorded,
    free_port,
)
from wingsbak.config import Config

# A child process that runs as root without the capabilities that bypass file permissions,
# so a chmod 000 entry is really unreadable to it (as to a non-root daemon, or root on NFS
# with root_squash); not needed when the tests do not run as root.
WITHOUT_DAC_OVERRIDE = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
)


def new_uuid() -> str:
    return str(uuid.uuid4())


def auth(token: str = NODE_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float = 15.0,
    interval: float = 0.02,
) -> None:
    """Poll ``predicate`` (plain or async) until it holds. A wait that runs out is a hang and
    raises ``TimeoutError`` naming ``what``; how long anything took is never asserted."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                held = predicate()
                if inspect.isawaitable(held):
                    held = await held
                if held:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None


# -- node layout and configuration -----------------------------------------------------------


@dataclass
class Node:
    root: Path
    data: Path
    backups: Path

    def server(self, files: dict[str, bytes | str] | None = None, name: str | None = None) -> str:
        """Create a server directory holding ``files`` (relative path -> content)."""
        server = name or new_uuid()
        base = self.data / server
        base.mkdir(parents=True, exist_ok=True)
        for rel, content in (files or {"server.properties": "motd=hello\n"}).items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        return server

    def random_server(self, size: int, files: int = 5) -> str:
        """A server holding ``size`` bytes of incompressible data in ``files`` files."""
        per = max(1, size // files)
        return self.server({f"world/region-{i}.mca": os.urandom(per) for i in range(files)})

    def archive(self, server: str, backup: str) -> Path:
        """The backup's archive where it is: the layout of Pelican Wings (and standalone
        wingsbak), Pterodactyl Wings' flat one, or wingsbak's earlier name; when none holds
        it, where a standalone daemon writes it."""
        pelican = self.backups / server / f"{backup}.tar.gz"
        flat = self.backups / f"{backup}.tar.gz"
        earlier = self.backups / server / f"backup-{backup}.tar.gz"
        return next((p for p in (pelican, flat, earlier) if p.exists()), pelican)

    async def outbox_settled(self) -> None:
        """Wait until the outbox file holds no report: a second daemon started on this node's
        directories would otherwise find a delivered one not yet crossed off, and send it
        again (which the panel refuses: the backup is already complete)."""
        outbox = self.backups / ".wingsbak-outbox.json"
        await wait_until(
            lambda: not outbox.exists() or outbox.read_text() == "[]", "the outbox to empty"
        )

    def temporaries(self, server: str | None = None) -> list[Path]:
        base = self.backups / server if server else self.backups
        return sorted(base.rglob("*.part"))

    def config_dict(self, remote: str = "", port: int = 8080, **backups: Any) -> dict[str, Any]:
        b: dict[str, Any] = {
            "report_retry_initial": 0.05,
            "report_retry_max": 0.2,
            "shutdown_grace": 0.5,
        }
        b.update(backups)
        return {
            "uuid": new_uuid(),
            "token_id": TOKEN_ID,
            "token": NODE_TOKEN,
            "remote": remote,
            "api": {"host": "127.0.0.1", "port": port},
            "system": {
                "data": str(self.data),
                "backup_directory": str(self.backups),
                "backups": b,
            },
        }


# -- the panel's records of what tests ask the node to do -------------------------------------


def panel_creates(
    remote: str, server: str, backup: str, adapter: Any = "wings", cfg: Config | None = None
) -> None:
    """The panel's record of a new backup, made before the node is called (as the panel
    does), when ``remote`` is a stand-in. The s3 adapter is always the panel's bucket (the
    node's own bucket is a store of the wings adapter)."""
    panel = Panel.by_url.get(remote.rstrip("/"))
    if panel is None or backup in panel.backups:
        return
    panel.register(server, backup, disk=str(adapter))


def panel_knows(remote: str, server: str, backup: str) -> None:
    """A backup the panel has a record of (one made earlier, or put on the node's disk by the
    test as an existing one), before it asks the node to restore it."""
    panel = Panel.by_url.get(remote.rstrip("/"))
    if panel is not None:
        panel.ensure(server, backup)


# -- file systems ----------------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str, extra: str = "") -> Iterator[Path]:
    """A tmpfs of ``size`` (mount options ``extra`` too) mounted on ``path``, unmounted
    afterwards; the test is skipped where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}{extra}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def mounted_xfs(image: Path, mountpoint: Path) -> Iterator[Path]:
    """A sparse 512 MiB XFS image with reflink (so FICLONE works), loop-mounted on
    ``mountpoint``, unmounted afterwards; skipped where mkfs.xfs (xfsprogs) is missing or
    mounting is not permitted."""
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs is not installed (Debian: xfsprogs)")
    with open(image, "wb") as f:
        f.truncate(512 * 1024 * 1024)  # XFS' smallest size is 300 MB
    made = subprocess.run(
        ["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"mkfs.xfs failed: {made.stderr.strip()}")
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


# -- the daemon, in-process ------------------------------------------------------------------


@dataclass
class Daemon:
    url: str
    cfg: Config
    app: web.Application
    session: aiohttp.ClientSession

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """``path`` goes on the wire as written (percent-escapes are not re-encoded)."""
        return self.session.request(method, URL(self.url + path, encoded=True), **kw)

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """POST ``body`` with the node token: the status and the JSON answer."""
        async with self.request("POST", path, json=body, headers=auth()) as r:
            return r.status, await r.json()

    async def post_backup(
        self, server: str, backup: str | None = None, ignore: str = "", **extra: Any
    ) -> tuple[int, Any]:
        """POST a backup the way the panel does: its record first, then the node."""
        body = {"adapter": "wings", "uuid": backup or new_uuid(), "ignore": ignore, **extra}
        panel_creates(self.cfg.remote, server, str(body["uuid"]), body["adapter"], self.cfg)
        return await self.post(f"/api/servers/{server}/backup", body)

    async def post_restore(self, server: str, backup: str, **extra: Any) -> tuple[int, Any]:
        panel_knows(self.cfg.remote, server, backup)
        body = {"adapter": "wings", "truncate_directory": False, **extra}
        return await self.post(f"/api/servers/{server}/backup/{backup}/restore", body)

    async def system(self) -> dict[str, Any]:
        async with self.request("GET", "/api/wingsbak", headers=auth()) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            jobs = (await self.system())["jobs"]
            if not jobs["running"] and not jobs["queued"] and not jobs.get("finishing"):
                return
            if time.monotonic() >= deadline:  # a hang, reported as such
                raise TimeoutError(f"jobs still busy: {jobs}")
            await asyncio.sleep(0.05)


# -- the daemon, as a real process -----------------------------------------------------------


@dataclass
class DaemonProcess:
    """``python -m wingsbak serve --config cfg.yml`` on a fixed free port."""

    node: Node
    config: dict[str, Any]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    command_prefix: list[str] = field(default_factory=list)  # e.g. setpriv and its options

    @property
    def url(self) -> str:
        tls = (self.config["api"].get("ssl") or {}).get("enabled")
        return f"{'https' if tls else 'http'}://127.0.0.1:{self.config['api']['port']}"

    async def post_backup(self, server: str, backup: str, **body: Any) -> int:
        """Ask for a wings backup (``body`` overrides), the way the panel does (its record of
        the backup first): the status."""
        panel_creates(self.config.get("remote", ""), server, backup)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{self.url}/api/servers/{server}/backup",
                json={"adapter": "wings", "uuid": backup, "ignore": "", **body},
                headers=auth(),
            ) as r,
        ):
            return r.status

    async def post_restore(self, server: str, backup: str, **body: Any) -> int:
        """Ask for a truncating restore from local storage (``body`` overrides), the way the
        panel does (its record of the backup first): the status."""
        panel_knows(self.config["remote"], server, backup)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{self.url}/api/servers/{server}/backup/{backup}/restore",
                json={"adapter": "wings", "truncate_directory": True, **body},
                headers=auth(),
            ) as r,
        ):
            return r.status

    async def start(self) -> None:
        cfg_path = self.node.root / "cfg.yml"
        cfg_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        serve = [sys.executable, "-m", "wingsbak", "serve", "--config", str(cfg_path)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open by the child
        try:
            self.proc = subprocess.Popen(
                [*self.command_prefix, *serve],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.node.root,
                env={**os.environ, "WINGSBAK_LOG_LEVEL": "debug"},
            )
        finally:
            log.close()
        proc = self.proc

        async def up(s: aiohttp.ClientSession) -> bool:
            if proc.poll() is not None:  # not a hang: the daemon failed
                raise AssertionError(f"daemon exited {proc.returncode}: {self.logs()}")
            try:
                async with s.get(self.url + "/healthz", ssl=False) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        async with aiohttp.ClientSession() as s:
            try:
                await wait_until(lambda: up(s), "the daemon to come up", 20.0, 0.05)
            except TimeoutError as e:
                e.add_note(self.logs())
                raise

    def logs(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        proc = self.proc
        proc.send_signal(sig)
        try:
            await wait_until(
                lambda: proc.poll() is not None, f"the daemon to stop on signal {sig}", timeout
            )
        except TimeoutError as e:
            self.kill_if_running()
            e.add_note(self.logs())
            raise
        return proc.returncode

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- download and websocket tokens -----------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(claims: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``claims`` valid from now for ten minutes, with ``over`` applied (``None`` drops one)."""
    now = int(time.time())
    merged = {**claims, "iat": now, "exp": now + 600, **over}
    return {k: v for k, v in merged.items() if v is not None}


def download_claims(server: str, backup: str, **over: Any) -> dict[str, Any]:
    claims = {"server_uuid": server, "backup_uuid": backup, "unique_id": uuid.uuid4().hex}
    return _claims(claims, over)


def ws_claims(server: str, **over: Any) -> dict[str, Any]:
    """The claims of a websocket token that may connect and read backup events."""
    claims = {
        "server_uuid": server,
        "user_uuid": new_uuid(),
        "permissions": ["websocket.connect", "backup.read"],
    }
    return _claims(claims, over)


def sign(claims: dict[str, Any], key: str = NODE_TOKEN, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def unsigned(claims: dict[str, Any]) -> str:
    """A token with ``alg: none``, crafted by hand (empty signature)."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def paused(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the process stopped itself at its failpoint (state T in /proc)."""
    if proc.poll() is not None:
        raise AssertionError(f"it exited {proc.returncode} before its failpoint")
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"
