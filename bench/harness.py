"""What the daemon benchmarks share: free ports, a recording panel, the daemon as a subprocess,
download tokens, the load-generating client process, and latency statistics.

Everything listens on 127.0.0.1. The panel runs in the benchmark's own event loop; the daemon
and the client that measures it are separate processes, so neither shares a GIL with the other.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml
from aiohttp import web

from bench.dataset import DATA_DIR

NODE_TOKEN = "bench-node-token-" + "0123456789abcdef" * 3
TOKEN_ID = "bench-token-id"
MIB = 1024 * 1024
BENCH_ROOT = DATA_DIR / "daemon"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {NODE_TOKEN}"}


def download_token(server: str, backup: str, ttl: int = 900) -> str:
    now = int(time.time())
    claims = {
        "server_uuid": server,
        "backup_uuid": backup,
        "unique_id": uuid.uuid4().hex,
        "iat": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, NODE_TOKEN, algorithm="HS256")


# -- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_header() -> str:
    cols = ("requests", "p50 ms", "p95 ms", "p99 ms", "max ms")
    return f"{'':<22}" + "".join(f"{c:>10}" for c in cols)


def latency_row(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    figures = [percentile(ms, q) for q in (50, 95, 99)] + [max(ms)]
    return f"{name:<22}{len(ms):>10}" + "".join(f"{f:>10.2f}" for f in figures)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- the panel -------------------------------------------------------------------------------


@dataclass
class RecordingPanel:
    """Answers 204 to every ``/api/remote/...`` call and records backup reports by uuid."""

    port: int = field(default_factory=free_port)
    reports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    other: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        prefix = "/api/remote/backups/"
        path = request.path
        if request.method == "POST" and path.startswith(prefix) and not path.endswith("restore"):
            self.reports.append((path.removeprefix(prefix), body or {}))
        else:
            self.other += 1
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def counts(self) -> Counter[str]:
        return Counter(backup for backup, _ in self.reports)

    async def wait_reports(self, backups: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not backups <= set(self.counts()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


# -- the daemon ------------------------------------------------------------------------------


@dataclass
class Node:
    """The daemon's folders under ``root``, wiped at every start of a benchmark."""

    root: Path
    data: Path
    backups: Path

    @classmethod
    def fresh(cls, name: str, keep_data: bool = False) -> Node:
        root = BENCH_ROOT / name
        data, backups = root / "data", root / "backups"
        shutil.rmtree(backups, ignore_errors=True)
        if not keep_data:
            shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True, exist_ok=True)
        backups.mkdir(parents=True, exist_ok=True)
        return cls(root, data, backups)


@dataclass
class DaemonProcess:
    node: Node
    remote: str
    max_concurrent: int = 2
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.node.root / "daemon.log"

    def config(self) -> dict[str, Any]:
        return {
            "uuid": str(uuid.uuid4()),
            "token_id": TOKEN_ID,
            "token": NODE_TOKEN,
            "remote": self.remote,
            "api": {"host": "127.0.0.1", "port": self.port},
            "system": {
                "data": str(self.node.data),
                "backup_directory": str(self.node.backups),
                "backups": {"max_concurrent": self.max_concurrent, "shutdown_grace": 5},
            },
        }

    async def start(self) -> None:
        cfg = self.node.root / "cfg.yml"
        cfg.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wingsbak", "serve", "--config", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.node.root,
            )
        await self._wait_healthy()

    async def _wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise SystemExit(f"daemon exited {self.proc.returncode}, see {self.log_path}")
                try:
                    async with s.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"daemon did not come up, see {self.log_path}")
                await asyncio.sleep(0.05)

    def status_kib(self, key: str) -> int:
        """A ``/proc/<pid>/status`` figure in KiB (VmHWM: peak RSS, VmRSS: current)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def error_lines(self) -> list[str]:
        """Log lines of level error or above (a traceback is logged as one of them)."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return [ln for ln in text.splitlines() if '"level": "error"' in ln or "Traceback" in ln]

    async def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                break
            await asyncio.sleep(0.05)
        return self.proc.returncode


async def system_state(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/api/wingsbak", headers=auth_headers()) as r:
        r.raise_for_status()
        jobs: dict[str, Any] = (await r.json())["jobs"]
        return jobs


async def wait_idle(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            jobs = await system_state(s, url)
            if not jobs["running"] and not jobs["queued"]:
                return True
            await asyncio.sleep(0.1)
    return False


# -- the client process ----------------------------------------------------------------------


@dataclass
class ClientProcess:
    """``python -m bench.client SPEC OUT``: the spec is written as JSON, the result read back."""

    spec: dict[str, Any]
    workdir: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def out_path(self) -> Path:
        return self.workdir / f"client-{self.spec['mode']}.out.json"

    @property
    def stop_path(self) -> Path:
        return self.workdir / f"client-{self.spec['mode']}.stop"

    async def start(self) -> None:
        spec_path = self.workdir / f"client-{self.spec['mode']}.json"
        self.stop_path.unlink(missing_ok=True)
        spec_path.write_text(json.dumps({**self.spec, "stop_file": str(self.stop_path)}))
        self.out_path.unlink(missing_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.client", str(spec_path), str(self.out_path)
        )

    async def result(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise SystemExit(f"the client did not finish within {timeout:.0f} s") from None
        if self.proc.returncode != 0:
            raise SystemExit(f"the client failed with exit code {self.proc.returncode}")
        result: dict[str, Any] = json.loads(self.out_path.read_text())
        return result

    async def stop(self, timeout: float) -> dict[str, Any]:
        self.stop_path.touch()
        return await self.result(timeout)


def env_report() -> str:
    return f"{os.cpu_count()} cores, python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}"
