"""The daemon's API latency under backup load, and its download speed against nginx (issue 3).

    python -m bench.api [--size 500M] [--requests 1000] [--concurrency 10] [--download 1G]

1. The bench data set is placed as 2 servers (hard-linked copies) and both are backed up at
   once (``max_concurrent: 2``). While they run, a separate client process sends
   ``--requests`` ``POST /api/servers/{server}/backup`` that are refused with 409 (the uuid of
   a running backup) and as many ``GET /api/system``, interleaved, ``--concurrency`` in flight.
2. A file of random bytes of ``--download`` bytes, named as a backup in the daemon's backup
   folder, is fetched with curl over loopback through ``GET /download/backup?token=<JWT>``
   and from nginx (``sendfile on``) serving the same file, alternately, ``--runs`` times each.

Targets: p99 < 20 ms for both kinds of request; wingsbak's download speed >= 0.8x nginx's.
The machine's cores are shared by the daemon, the backups' compressor threads, the client,
curl and nginx: the figures are what this machine does, not what an idle daemon does.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.dataset import DEFAULT_SIZE, MB, build_dataset, parse_size
from bench.harness import (
    MIB,
    ClientProcess,
    DaemonProcess,
    Node,
    RecordingPanel,
    auth_headers,
    download_token,
    env_report,
    free_port,
    latency_header,
    latency_row,
    percentile,
    system_state,
    verdict,
    wait_idle,
)
from bench.nginx import start_nginx

P99_TARGET_MS = 20.0
RATIO_TARGET = 0.8
GIB = 1024 * MIB


# -- part 1: latency while two backups run ---------------------------------------------------


def place_servers(node: Node, dataset: Path, count: int) -> list[str]:
    """Hard-linked copies of the data set, one per server: no extra disk, same bytes."""
    servers = [str(uuid.uuid4()) for _ in range(count)]
    for server in servers:
        subprocess.run(["cp", "-al", str(dataset), str(node.data / server)], check=True)
    return servers


async def start_backups(
    daemon: DaemonProcess, servers: list[str], wait_running: bool = True
) -> list[str]:
    backups = [str(uuid.uuid4()) for _ in servers]
    async with aiohttp.ClientSession() as s:
        for server, backup in zip(servers, backups, strict=True):
            body = {"adapter": "wings", "uuid": backup, "ignore": ""}
            url = f"{daemon.url}/api/servers/{server}/backup"
            async with s.post(url, json=body, headers=auth_headers()) as r:
                if r.status != 202:
                    raise SystemExit(f"backup of {server} answered {r.status}")
        deadline = time.monotonic() + 10
        while wait_running and len((await system_state(s, daemon.url))["running"]) < len(servers):
            if time.monotonic() > deadline:
                raise SystemExit("the backups did not start")
            await asyncio.sleep(0.02)
    return backups


async def run_mix(
    args: argparse.Namespace, node: Node, daemon: DaemonProcess, server: str, backup: str
) -> dict[str, Any]:
    spec = mixed_spec(daemon, server, backup, args.requests, args.concurrency)
    client = ClientProcess(spec, node.root)
    await client.start()
    return await client.result(timeout=300)


def mixed_spec(
    daemon: DaemonProcess, server: str, backup: str, n: int, conc: int
) -> dict[str, Any]:
    body = {"adapter": "wings", "uuid": backup, "ignore": ""}
    return {
        "mode": "mixed",
        "url": daemon.url,
        "concurrency": conc,
        "ops": [
            {
                "name": "POST backup (409)",
                "method": "POST",
                "path": f"/api/servers/{server}/backup",
                "json": body,
                "headers": auth_headers(),
                "count": n,
            },
            {
                "name": "GET /api/system",
                "method": "GET",
                "path": "/api/system",
                "headers": auth_headers(),
                "count": n,
            },
        ],
    }


def print_latency(result: dict[str, Any], expected: dict[str, int]) -> bool:
    print(latency_header())
    ok = True
    for name, seconds in result["latencies"].items():
        print(latency_row(name, seconds))
    for name, seconds in result["latencies"].items():
        statuses = result["statuses"][name]
        good = statuses.get(str(expected[name]), 0) == len(seconds)
        p99 = percentile(seconds, 99) * 1000
        passed = good and p99 < P99_TARGET_MS
        ok = ok and passed
        print(
            f"{verdict(passed)}  {name}: p99 {p99:.2f} ms (target < {P99_TARGET_MS:.0f} ms), "
            f"statuses {statuses}"
        )
    return ok


async def latency_part(
    args: argparse.Namespace, node: Node, daemon: DaemonProcess, panel_reports: RecordingPanel
) -> bool:
    dataset = build_dataset(total_bytes=args.size)
    servers = place_servers(node, dataset, 2)
    # The same mix on an idle daemon first (409 for an archive already on disk), as a baseline.
    idle_backups = await start_backups(daemon, servers[:1], wait_running=False)
    await panel_reports.wait_reports(set(idle_backups), timeout=900)
    idle = await run_mix(args, node, daemon, servers[0], idle_backups[0])
    print(f"\nidle daemon: {2 * args.requests} requests, {args.concurrency} in flight")
    print_latency(idle, {"POST backup (409)": 409, "GET /api/system": 200})
    backups = await start_backups(daemon, servers)
    result = await run_mix(args, node, daemon, servers[0], backups[0])
    async with aiohttp.ClientSession() as s:
        still_running = len((await system_state(s, daemon.url))["running"])
    seconds = result["ended"] - result["started"]
    print(
        f"\n{dataset.name} as 2 servers, 2 backups running; {2 * args.requests} requests in "
        f"{seconds:.2f} s from a client process, {args.concurrency} in flight; backups still "
        f"running when the client finished: {still_running} of 2"
    )
    ok = print_latency(result, {"POST backup (409)": 409, "GET /api/system": 200})
    done = await panel_reports.wait_reports(set(backups), timeout=900)
    reports = dict(panel_reports.reports)
    sizes = [reports[b].get("size", 0) for b in backups if b in reports]
    print(
        f"backups reported: {len(sizes)} of 2, successful: "
        f"{sum(bool(reports[b].get('successful')) for b in backups if b in reports)}, "
        f"archive MB: {', '.join(f'{s / MB:.0f}' for s in sizes)}"
    )
    if still_running < 2:
        print("NOTE: a backup finished before the client did; rerun with a larger --size")
    return ok and done


# -- part 2: download speed against nginx ----------------------------------------------------


def write_random_file(path: Path, size: int) -> None:
    rng = random.Random(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    block = 16 * MIB
    with open(path, "wb") as f:
        for offset in range(0, size, block):
            f.write(rng.randbytes(min(block, size - offset)))
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the cache


NGINX_HTTP = """    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location = /backup.tar.gz {{ alias {file}; }}
    }}
"""


@dataclass
class Nginx:
    file: Path
    tmp: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/backup.tar.gz"

    def start(self) -> None:
        self.port = free_port()
        http = NGINX_HTTP.format(port=self.port, file=self.file)
        self.proc = start_nginx(self.tmp, self.port, http)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def curl_fetch(url: str) -> tuple[float, int, int]:
    """(seconds, bytes, status) of one download to /dev/null."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download} %{http_code}", url],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.split()
    if len(out) != 3:
        return 0.0, 0, 0
    return float(out[0]), int(out[1]), int(out[2])


def timed_downloads(
    daemon: DaemonProcess, nginx: Nginx, server: str, backup: str, runs: int, size: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"wingsbak": [], "nginx": []}
    for i in range(runs):
        order = ["wingsbak", "nginx"] if i % 2 == 0 else ["nginx", "wingsbak"]
        for tool in order:
            if tool == "wingsbak":
                token = download_token(server, backup)
                url = f"{daemon.url}/download/backup?token={token}"
            else:
                url = nginx.url
            seconds, got, status = curl_fetch(url)
            if status != 200 or got != size:
                raise SystemExit(f"{tool}: status {status}, {got} of {size} bytes")
            times[tool].append(seconds)
    return times


def print_downloads(times: dict[str, list[float]], size: int) -> bool:
    print(f"\ndownload of a {size / MB:.0f} MB archive over loopback, curl, {len(times['nginx'])}x")
    print(f"{'':<10}{'best s':>9}{'median s':>10}{'best MB/s':>11}{'median MB/s':>13}  runs (s)")
    rate: dict[str, tuple[float, float]] = {}
    for tool, runs in times.items():
        best, med = min(runs), statistics.median(runs)
        rate[tool] = (size / MB / best, size / MB / med)
        listed = " ".join(f"{r:.3f}" for r in runs)
        print(
            f"{tool:<10}{best:>9.3f}{med:>10.3f}{rate[tool][0]:>11.0f}{rate[tool][1]:>13.0f}"
            f"  {listed}"
        )
    best_ratio = rate["wingsbak"][0] / rate["nginx"][0]
    med_ratio = rate["wingsbak"][1] / rate["nginx"][1]
    ok = med_ratio >= RATIO_TARGET
    print(
        f"{verdict(ok)}  wingsbak / nginx: {best_ratio:.2f} (best), {med_ratio:.2f} (median); "
        f"target >= {RATIO_TARGET}"
    )
    return ok


async def download_part(args: argparse.Namespace, node: Node, daemon: DaemonProcess) -> bool:
    await wait_idle(daemon.url, timeout=900)
    server, backup = str(uuid.uuid4()), str(uuid.uuid4())
    (node.data / server).mkdir()
    path = node.backups / server / f"backup-{backup}.tar.gz"
    write_random_file(path, args.download)
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        nginx = Nginx(path, Path(tmp))
        nginx.start()
        try:
            times = await asyncio.to_thread(
                timed_downloads, daemon, nginx, server, backup, args.runs, args.download
            )
        finally:
            nginx.stop()
    path.unlink()
    return print_downloads(times, args.download)


# -- driver ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    print(env_report())
    node = Node.fresh("api")
    panel = RecordingPanel()
    await panel.start()
    daemon = DaemonProcess(node, panel.url, max_concurrent=2)
    await daemon.start()
    try:
        ok_latency = await latency_part(args, node, daemon, panel)
        ok_download = await download_part(args, node, daemon)
    finally:
        code = await daemon.stop()
        await panel.stop()
    errors = daemon.error_lines()
    print(f"\ndaemon exit code {code}, error lines in its log: {len(errors)}")
    for line in errors[:5]:
        print("  " + line[:300])
    print(f"\nSUMMARY  latency: {verdict(ok_latency)}  download: {verdict(ok_download)}")
    return 0 if ok_latency and ok_download else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="data set, 500M")
    parser.add_argument("--requests", type=int, default=1000, help="of each kind")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--download", type=parse_size, default=GIB, help="archive size, 1G")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
