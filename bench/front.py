"""wingsbak in front of Wings (issue 11): the cost of the pass-through, measured against the
Wings stand-in of the tests reached directly.

    python -m bench.front [--mib 1024] [--messages 1000] [--backup-mib 256]

Three processes: the Wings stand-in (tests/support/wings_standin.py), wingsbak with
``api.upstream`` pointing at it, and this one as the client. Printed:

- a ``--mib`` download (``GET /download/file``) and upload (``POST .../files/write``)
  straight to the stand-in and through wingsbak, alternating, best of two: MB/s and the ratio
  (target: at least 0.8x); wingsbak's peak RSS (VmHWM) over the run (target: under 150 MiB);
- a console round trip (``send command`` -> ``console output``) over the websocket, 200
  messages a second, straight and relayed: p50/p99 and the p99 wingsbak adds (target: 2 ms);
- ``GET /api/servers/{s}`` through wingsbak every 10 ms, idle and while 2 backups run: p99
  (target: under 20 ms), each beside the same request straight to the stand-in.

Nothing here is asserted by a test; the figures are for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from bench.harness import (
    MIB,
    NODE_TOKEN,
    DaemonProcess,
    Node,
    RecordingPanel,
    auth_headers,
    env_report,
    free_port,
    latency_header,
    latency_row,
    percentile,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
THROUGHPUT_TARGET = 0.8
RSS_TARGET_MIB = 150
ADDED_P99_TARGET_MS = 2.0
API_P99_TARGET_MS = 20.0
RATE = 200  # console messages a second


# -- the processes ---------------------------------------------------------------------------


@dataclass
class FrontDaemon(DaemonProcess):
    upstream: str = ""

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["api"]["upstream"] = self.upstream
        return cfg


class Standin:
    """``python -m bench.front --standin PORT ROOT SERVER...`` in a process of its own."""

    def __init__(self, root: Path, servers: list[str]) -> None:
        self.port = free_port()
        self.root = root
        self.servers = servers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = [sys.executable, "-m", "bench.front", "--standin", str(self.port), str(self.root)]
        self.proc = subprocess.Popen([*args, *self.servers], cwd=ROOT)
        async with aiohttp.ClientSession() as s:
            for _ in range(400):
                if self.proc.poll() is not None:
                    raise SystemExit(f"the Wings stand-in exited {self.proc.returncode}")
                try:
                    async with s.get(self.url + "/api/system", headers=auth_headers()) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        raise SystemExit("the Wings stand-in did not come up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


async def run_standin(port: int, root: Path, servers: list[str]) -> None:
    from tests.support.wings_standin import WingsStandin  # the tests' stand-in, not a second one

    standin = WingsStandin(root, token=NODE_TOKEN, port=port)
    for server in servers:
        standin.server(server, state="running")
    await standin.start()
    await asyncio.Event().wait()


# -- measurements ----------------------------------------------------------------------------


def file_token(server: str, path: str) -> str:
    now = int(time.time())
    claims = {"server_uuid": server, "file_path": path, "unique_id": uuid.uuid4().hex}
    return jwt.encode({**claims, "iat": now, "exp": now + 900}, NODE_TOKEN, algorithm="HS256")


def ws_token(server: str) -> str:
    now = int(time.time())
    claims = {
        "server_uuid": server,
        "user_uuid": str(uuid.uuid4()),
        "permissions": ["websocket.connect", "control.console", "backup.read"],
        "iat": now,
        "exp": now + 900,
    }
    return jwt.encode(claims, NODE_TOKEN, algorithm="HS256")


async def download(session: aiohttp.ClientSession, base: str, server: str, size: int) -> float:
    started = time.perf_counter()
    got = 0
    async with session.get(f"{base}/download/file?token={file_token(server, 'big.bin')}") as r:
        r.raise_for_status()
        async for chunk in r.content.iter_any():
            got += len(chunk)
    if got != size:
        raise SystemExit(f"download from {base} returned {got} of {size} bytes")
    return size / (time.perf_counter() - started) / 1e6


async def upload(session: aiohttp.ClientSession, base: str, server: str, size: int) -> float:
    block = hashlib.sha256(b"front").digest() * (MIB // 32)

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(size // MIB):
            yield block

    started = time.perf_counter()
    url = f"{base}/api/servers/{server}/files/write?file=up.bin"
    async with session.post(url, data=body(), headers=auth_headers()) as r:
        if r.status != 204:
            raise SystemExit(f"upload to {base} answered {r.status}: {await r.text()}")
    return size / (time.perf_counter() - started) / 1e6


async def console_round_trips(base: str, server: str, messages: int) -> list[float]:
    """Seconds from each ``send command`` to its ``console output``, sent at RATE a second."""
    sent: dict[str, float] = {}
    rtts: list[float] = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{base}/api/servers/{server}/ws") as ws,
    ):
        await ws.send_json({"event": "auth", "args": [ws_token(server)]})
        while (await ws.receive_json(timeout=10))["event"] != "status":
            pass

        async def receive() -> None:
            while len(rtts) < messages:
                event = await ws.receive_json(timeout=30)
                if event["event"] == "console output" and event["args"][0] in sent:
                    rtts.append(time.perf_counter() - sent[event["args"][0]])

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for i in range(messages):
            await asyncio.sleep(max(0.0, start + i / RATE - time.perf_counter()))
            command = f"say {i}"
            sent[command] = time.perf_counter()
            await ws.send_str(json.dumps({"event": "send command", "args": [command]}))
        await receiver
    return rtts


async def sample_api(base: str, server: str, stop: asyncio.Event) -> list[float]:
    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(f"{base}/api/servers/{server}", headers=auth_headers()) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"GET /api/servers/{server} answered {r.status}")
            out.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
    return out


def random_server(data: Path, size: int) -> str:
    server = str(uuid.uuid4())
    root = data / server / "world"
    root.mkdir(parents=True)
    per = 16 * MIB
    for i in range(max(1, size // per)):
        (root / f"r.{i}.mca").write_bytes(os.urandom(per))
    return server


async def bench(args: argparse.Namespace) -> None:
    size = args.mib * MIB
    node = Node.fresh("front")
    server = str(uuid.uuid4())
    (node.data / server).mkdir()
    backed = [random_server(node.data, args.backup_mib * MIB) for _ in range(2)]
    big = node.data / server / "big.bin"
    block = os.urandom(MIB)
    with big.open("wb") as f:
        for _ in range(size // MIB):
            f.write(block)
    print(f"wingsbak in front of Wings: {env_report()}")
    standin = Standin(node.data, [server, *backed])
    panel = RecordingPanel()
    await standin.start()
    await panel.start()
    daemon = FrontDaemon(node, panel.url, upstream=standin.url)
    await daemon.start()
    parts = set(args.parts.split(","))
    try:
        if "transfer" in parts:
            await throughput(daemon, standin, server, size)
            rss = daemon.status_kib("VmHWM") / 1024
            print(f"\nwingsbak peak RSS (VmHWM): {rss:.0f} MiB   {verdict(rss < RSS_TARGET_MIB)}")
        if "console" in parts:
            direct = await console_round_trips(standin.url, server, args.messages)
            relayed = await console_round_trips(daemon.url, server, args.messages)
            print(f"\nconsole round trip, {RATE} messages/s\n{latency_header()}")
            print(latency_row("straight to Wings", direct))
            print(latency_row("through wingsbak", relayed))
            added = (percentile(relayed, 99) - percentile(direct, 99)) * 1000
            ok = added <= ADDED_P99_TARGET_MS
            print(f"p99 added: {added:.2f} ms (target <= {ADDED_P99_TARGET_MS} ms)   {verdict(ok)}")
        if "api" in parts:
            await api_latency(daemon, standin, panel, server, backed)
    finally:
        await daemon.stop()
        standin.stop()
        await panel.stop()
        big.unlink(missing_ok=True)


async def throughput(daemon: FrontDaemon, standin: Standin, server: str, size: int) -> None:
    best: dict[tuple[str, str], float] = {}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            for name, base in (("straight", standin.url), ("wingsbak", daemon.url)):
                for way, fn in (("download", download), ("upload", upload)):
                    rate = await fn(session, base, server, size)
                    best[(way, name)] = max(best.get((way, name), 0.0), rate)
    print(f"\n{size / MIB:.0f} MiB, best of 2      straight MB/s   wingsbak MB/s   ratio")
    for way in ("download", "upload"):
        s, w = best[(way, "straight")], best[(way, "wingsbak")]
        ok = w / s >= THROUGHPUT_TARGET
        print(f"{way:<26}{s:>12.0f}{w:>16.0f}{w / s:>8.2f}x   {verdict(ok)}")


async def api_latency(
    daemon: FrontDaemon, standin: Standin, panel: RecordingPanel, server: str, backed: list[str]
) -> None:
    idle: dict[str, list[float]] = {}
    for name, base in (("idle, straight", standin.url), ("idle, wingsbak", daemon.url)):
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_api(base, server, stop))
        await asyncio.sleep(3.0)
        stop.set()
        idle[name] = await sampler
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_api(daemon.url, server, stop))
    # The same request straight to the stand-in meanwhile: what the backups cost any process
    # on these cores, wingsbak or not.
    control = asyncio.create_task(sample_api(standin.url, server, stop))
    backups = {str(uuid.uuid4()) for _ in backed}
    async with aiohttp.ClientSession() as session:
        for s, backup in zip(backed, backups, strict=True):
            body = {"adapter": "wings", "uuid": backup}
            url = f"{daemon.url}/api/servers/{s}/backup"
            async with session.post(url, json=body, headers=auth_headers()) as r:
                if r.status != 202:
                    raise SystemExit(f"backup answered {r.status}")
    # GET /api/system is Wings' here: the panel's reports say when the backups are done.
    idled = await panel.wait_reports(backups, 600)
    stop.set()
    busy = await sampler
    busy_straight = await control
    print(f"\nproxied GET /api/servers/{{s}} every 10 ms\n{latency_header()}")
    for name, seconds in idle.items():
        print(latency_row(name, seconds))
    print(latency_row("2 backups, straight", busy_straight))
    print(latency_row("2 backups, wingsbak", busy))
    p99 = percentile(busy, 99) * 1000
    ok = p99 < API_P99_TARGET_MS and idled
    print(f"p99 while backing up: {p99:.2f} ms (target < {API_P99_TARGET_MS} ms)   {verdict(ok)}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--standin"]:
        asyncio.run(run_standin(int(argv[1]), Path(argv[2]), argv[3:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB down and up (1024)")
    parser.add_argument("--messages", type=int, default=1000, help="console messages (1000)")
    parser.add_argument(
        "--parts", default="transfer,console,api", help="what to measure (all three)"
    )
    parser.add_argument("--backup-mib", type=int, default=256, help="MiB per backed-up server")
    asyncio.run(bench(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
