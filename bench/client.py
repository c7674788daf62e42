"""The load-generating client of the daemon benchmarks, run as its own process.

    python -m bench.client SPEC.json OUT.json

Modes (``spec["mode"]``):

- ``mixed``: the requests of ``spec["ops"]`` (each ``name, method, path, json, count``),
  interleaved, ``spec["concurrency"]`` in flight; per op the latencies and the statuses.
- ``sample``: ``GET /api/system`` one at a time, ``interval`` seconds apart, until
  ``stop_file`` exists (or ``max_seconds``/``max_requests``); latencies, statuses and the
  largest number of running and queued backups seen.
- ``download``: every URL of ``spec["urls"]`` at once; status, size, sha1 and time of each.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import sys
import time
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import urlsplit

import aiohttp

Result = dict[str, Any]


def _interleave(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round-robin over the ops, so every kind of request meets the same conditions."""
    streams = [itertools.repeat(op, int(op["count"])) for op in ops]
    return [op for group in itertools.zip_longest(*streams) for op in group if op is not None]


class Connection:
    """One keep-alive HTTP/1.1 connection with requests encoded in advance: a client this
    thin spends little of the shared CPU, so the latency measured is mostly the daemon's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base: str) -> Connection:
        url = urlsplit(base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1]), body, time.perf_counter() - start

    def close(self) -> None:
        self.writer.close()


def encode(base: str, op: dict[str, Any]) -> bytes:
    body = json.dumps(op["json"]).encode() if op.get("json") is not None else b""
    lines = [
        f"{op['method']} {op['path']} HTTP/1.1",
        f"Host: {urlsplit(base).netloc}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (op.get("headers") or {}).items()),
    ]
    if body:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def mixed(spec: dict[str, Any]) -> Result:
    base = spec["url"]
    work = iter([(op["name"], encode(base, op)) for op in _interleave(spec["ops"])])
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)

    async def worker() -> None:
        conn = await Connection.open(base)
        try:
            for name, raw in work:
                status, _body, seconds = await conn.request(raw)
                latencies[name].append(seconds)
                statuses[name][status] += 1
        finally:
            conn.close()

    started = time.time()
    await asyncio.gather(*(worker() for _ in range(int(spec["concurrency"]))))
    return {
        "started": started,
        "ended": time.time(),
        "latencies": dict(latencies),
        "statuses": {k: dict(v) for k, v in statuses.items()},
    }


async def sample(spec: dict[str, Any]) -> Result:
    deadline = time.monotonic() + float(spec.get("max_seconds", 600))
    max_requests = int(spec.get("max_requests", 100_000))
    raw = encode(spec["url"], {"method": "GET", "path": "/api/system", **spec})
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    max_running = max_queued = 0
    conn = await Connection.open(spec["url"])
    try:
        while not os.path.exists(spec["stop_file"]) and len(latencies) < max_requests:
            if time.monotonic() > deadline:
                break
            status, body, seconds = await conn.request(raw)
            latencies.append(seconds)
            statuses[status] += 1
            jobs = json.loads(body).get("jobs", {}) if status == 200 else {}
            max_running = max(max_running, len(jobs.get("running", [])))
            max_queued = max(max_queued, len(jobs.get("queued", [])))
            await asyncio.sleep(float(spec.get("interval", 0.01)))
    finally:
        conn.close()
    return {
        "latencies": {"GET /api/system": latencies},
        "statuses": {"GET /api/system": dict(statuses)},
        "max_running": max_running,
        "max_queued": max_queued,
    }


async def _download(session: aiohttp.ClientSession, url: str) -> Result:
    digest = hashlib.sha1()
    size = 0
    start = time.perf_counter()
    async with session.get(url) as r:
        async for chunk in r.content.iter_chunked(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
        status = r.status
    return {
        "status": status,
        "size": size,
        "sha1": digest.hexdigest(),
        "seconds": time.perf_counter() - start,
    }


async def download(spec: dict[str, Any]) -> Result:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 300)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(*(_download(session, u) for u in spec["urls"]))
    return {"downloads": list(results)}


MODES = {"mixed": mixed, "sample": sample, "download": download}


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    result = asyncio.run(MODES[spec["mode"]](spec))
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
