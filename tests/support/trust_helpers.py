"""Helpers of the verification, notification and alerting tests: the daemon's JSON log read
back, archives damaged on purpose, /metrics parsed, and a webhook receiver that takes what
Discord and Slack take."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.daemon_helpers import NODE_TOKEN, auth, wait_until

# -- the daemon's log ---------------------------------------------------------------------------


def log_events(log_path: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon process (those named ``event``)."""
    out = []
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and (event is None or entry.get("event") == event):
            out.append(entry)
    return out


async def wait_event(
    log_path: Path, event: str, timeout: float = 30.0, **fields: Any
) -> dict[str, Any]:
    """The first log line named ``event`` whose fields include ``fields``."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        for entry in log_events(log_path, event):
            if all(entry.get(k) == v for k, v in fields.items()):
                found.append(entry)
                return True
        return False

    try:
        await wait_until(seen, f"log line {event} {fields}", timeout)
    except TimeoutError as e:
        e.add_note(log_path.read_text(errors="replace")[-4000:] if log_path.exists() else "")
        raise
    return found[0]


# -- damage ------------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int | None = None) -> None:
    """One bit of one byte changed in place (the middle by default); size and mtime kept, as
    silent corruption keeps them."""
    st = path.stat()
    at = st.st_size // 2 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def truncate(path: Path, keep: float = 0.6) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


# -- metrics -----------------------------------------------------------------------------------


async def metrics(url: str, token: str = NODE_TOKEN) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}`` (labels as the exposition writes them)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics", headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# -- a webhook receiver ------------------------------------------------------------------------


@dataclass
class Received:
    body: dict[str, Any]
    content_type: str


@dataclass
class WebhookReceiver:
    """A chat webhook on a fixed port: ``flavour`` "discord" answers 204 as Discord's
    "Execute Webhook" does without ``?wait=true`` and refuses what Discord refuses (no
    ``content``, one over 2000 characters, ``allowed_mentions`` not an object:
    https://discord.com/developers/docs/resources/webhook#execute-webhook); "slack" answers
    200 ``ok`` and refuses a body without a ``text`` string, as an incoming webhook does
    (https://api.slack.com/messaging/webhooks). Both want a JSON body. Refusals are kept in
    ``refused`` (and answered 400). While stopped its port stays bound without listening
    (connections are refused, and no other process on a busy machine can take it)."""

    flavour: str = "discord"
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    port: int = field(init=False, default=0)
    _runner: web.AppRunner | None = None
    _reserved: socket.socket | None = None

    def __post_init__(self) -> None:
        self._reserve()
        assert self._reserved is not None
        self.port = int(self._reserved.getsockname()[1])

    def _reserve(self, port: int = 0) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        self._reserved = s

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/webhooks/1234/s3cr3t-token"

    async def start(self) -> None:
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        app = web.Application()
        app.router.add_post("/api/webhooks/1234/s3cr3t-token", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._reserved is None:
            self._reserve(self.port)

    async def shutdown(self) -> None:
        """Stopped for good: the port is let go."""
        await self.stop()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    async def _handle(self, request: web.Request) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        try:
            body = await request.json()
        except ValueError:
            return self._refuse("not JSON")
        if not content_type.startswith("application/json") or not isinstance(body, dict):
            return self._refuse(f"not a JSON object ({content_type})")
        if self.flavour == "discord":
            content = body.get("content")
            if not isinstance(content, str) or not 0 < len(content) <= 2000:
                return self._refuse("content must be a string of 1 to 2000 characters")
            mentions = body.get("allowed_mentions")
            if mentions is not None and not isinstance(mentions, dict):
                return self._refuse("allowed_mentions must be an object")
            answer = web.Response(status=204)
        else:
            if not isinstance(body.get("text"), str) or not body["text"]:
                return self._refuse("no_text")
            answer = web.Response(text="ok")
        self.received.append(Received(body, content_type))
        return answer

    def _refuse(self, why: str) -> web.Response:
        self.refused.append(why)
        return web.Response(status=400, text=why)

    async def wait(self, count: int = 1, timeout: float = 30.0) -> list[Received]:
        await wait_until(
            lambda: len(self.received) >= count, f"{count} notification(s)", timeout=timeout
        )
        return self.received
