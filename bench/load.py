"""50 servers ask for a backup at once, twice; then 200 concurrent downloads (issue 7, Load).

    python -m bench.load [--servers 50] [--files 200] [--downloads 200]

The daemon runs as a subprocess with ``max_concurrent: 2`` and a recording panel. A separate
client process samples ``GET /api/system`` every 10 ms for the whole run. Checked:

- every ``POST /api/servers/{server}/backup`` answers 202; running backups never exceed 2;
- every backup completes and the panel receives exactly one report for it (duplicates and
  misses are listed), successful, with the checksum of the archive's ``.sha1`` sidecar;
- p99 of the sampled ``GET /api/system`` under 50 ms;
- the daemon's peak RSS (VmHWM) at the start, after the first and after the second round
  (flat: the second round adds at most 10 %);
- ``--downloads`` concurrent downloads of one archive with distinct tokens all return the
  archive's bytes (sha1 equal to its sidecar).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    ClientProcess,
    DaemonProcess,
    Node,
    RecordingPanel,
    auth_headers,
    download_token,
    env_report,
    latency_header,
    latency_row,
    percentile,
    verdict,
    wait_idle,
)

P99_TARGET_MS = 50.0
MEMORY_GROWTH = 1.10
MAX_CONCURRENT = 2


@dataclass
class Outcome:
    """What the run saw, checked against the targets at the end."""

    post_statuses: list[int] = field(default_factory=list)
    backups: dict[str, str] = field(default_factory=dict)  # backup -> server
    hwm_kib: list[tuple[str, int]] = field(default_factory=list)
    completed_in: list[float] = field(default_factory=list)
    sample: dict[str, Any] = field(default_factory=dict)
    downloads: list[dict[str, Any]] = field(default_factory=list)
    expected_sha1: str = ""


def make_tree(root: Path, seed: int, files: int) -> None:
    """``files`` files of 4-32 KB, half text (compresses), half random (does not)."""
    rng = random.Random(seed)
    words = b"level chunk player joined saved region entity tick warn info ".split()
    for i in range(files):
        path = root / f"dir{i % 10}" / f"file{i}.{'log' if i % 2 else 'dat'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = rng.randint(4096, 32768)
        if i % 2:
            data = b" ".join(rng.choice(words) for _ in range(size // 6))[:size]
        else:
            data = rng.randbytes(size)
        path.write_bytes(data)


def make_servers(node: Node, count: int, files: int) -> list[str]:
    servers = [
        str(uuid.UUID(int=random.Random(i).getrandbits(128), version=4)) for i in range(count)
    ]
    for i, server in enumerate(servers):
        make_tree(node.data / server, i, files)
    return servers


async def post_backup(session: aiohttp.ClientSession, url: str, server: str, backup: str) -> int:
    body = {"adapter": "wings", "uuid": backup, "ignore": ""}
    path = f"{url}/api/servers/{server}/backup"
    async with session.post(path, json=body, headers=auth_headers()) as r:
        await r.read()
        return r.status


async def backup_round(
    daemon: DaemonProcess, panel: RecordingPanel, servers: list[str], out: Outcome
) -> None:
    """All servers POST at once; wait until each backup is reported and the daemon is idle."""
    backups = {str(uuid.uuid4()): server for server in servers}
    start = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        statuses = await asyncio.gather(
            *(post_backup(s, daemon.url, server, b) for b, server in backups.items())
        )
    out.post_statuses.extend(statuses)
    out.backups.update(backups)
    await panel.wait_reports(set(backups), timeout=600)
    await wait_idle(daemon.url, timeout=60)
    out.completed_in.append(time.monotonic() - start)


async def concurrent_downloads(daemon: DaemonProcess, node: Node, out: Outcome, count: int) -> None:
    backup, server = next(iter(out.backups.items()))
    archive = node.backups / server / f"backup-{backup}.tar.gz"
    out.expected_sha1 = archive.with_name(archive.name + ".sha1").read_text().split()[0]
    urls = [
        f"{daemon.url}/download/backup?token={download_token(server, backup)}" for _ in range(count)
    ]
    client = ClientProcess({"mode": "download", "urls": urls, "timeout": 300}, node.root)
    await client.start()
    out.downloads = (await client.result(timeout=330))["downloads"]


def sidecar_sha1(node: Node, server: str, backup: str) -> str:
    path = node.backups / server / f"backup-{backup}.tar.gz.sha1"
    return path.read_text().split()[0] if path.is_file() else ""


def check_reports(node: Node, panel: RecordingPanel, out: Outcome) -> bool:
    counts = panel.counts()
    dup = {b: n for b, n in counts.items() if n > 1}
    missing = [b for b in out.backups if b not in counts]
    unknown = [b for b in counts if b not in out.backups]
    failed = [b for b, body in panel.reports if not body.get("successful")]
    wrong = [
        b
        for b, body in panel.reports
        if b in out.backups and body.get("checksum") != sidecar_sha1(node, out.backups[b], b)
    ]
    print(
        f"panel reports: {len(panel.reports)} for {len(out.backups)} backups; "
        f"duplicates {len(dup)}, missing {len(missing)}, unknown {len(unknown)}, "
        f"unsuccessful {len(failed)}, checksum != sidecar {len(wrong)}"
    )
    for b, n in dup.items():
        print(f"  duplicate: {b} reported {n} times")
    for b in missing:
        print(f"  missing: {b}")
    return not (dup or missing or unknown or failed or wrong)


def print_checks(checks: list[tuple[str, bool, str]]) -> bool:
    print(f"\n{'target':<46}{'result':<8}figures")
    for name, ok, figures in checks:
        print(f"{name:<46}{verdict(ok):<8}{figures}")
    return all(ok for _, ok, _ in checks)


def summarize(node: Node, panel: RecordingPanel, out: Outcome) -> bool:
    accepted = out.post_statuses.count(202)
    latencies = out.sample["latencies"]["GET /api/system"]
    p99 = percentile(latencies, 99) * 1000
    api_ok = set(out.sample["statuses"]["GET /api/system"]) == {"200"}
    hwm = dict(out.hwm_kib)
    growth = hwm["after round 2"] / hwm["after round 1"]
    good = [d for d in out.downloads if d["status"] == 200 and d["sha1"] == out.expected_sha1]
    print("\nGET /api/system sampled during both rounds (one at a time, 10 ms apart)")
    print(latency_header())
    print(latency_row("GET /api/system", latencies))
    print(
        "daemon peak RSS (VmHWM): " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in out.hwm_kib)
    )
    secs = [d["seconds"] for d in out.downloads]
    print(f"{len(secs)} downloads: p50 {percentile(secs, 50):.2f} s, max {max(secs):.2f} s")
    print("rounds completed in: " + ", ".join(f"{s:.1f} s" for s in out.completed_in))
    reports_ok = check_reports(node, panel, out)
    return print_checks(
        [
            (
                "every POST answered 202",
                accepted == len(out.post_statuses),
                f"{accepted} of {len(out.post_statuses)}",
            ),
            (
                f"running <= {MAX_CONCURRENT} at every sample",
                out.sample["max_running"] <= MAX_CONCURRENT,
                f"max running {out.sample['max_running']}, max queued {out.sample['max_queued']}, "
                f"{len(latencies)} samples",
            ),
            (
                "each backup completed, reported exactly once",
                reports_ok,
                f"{len(panel.reports)} reports, {len(out.backups)} backups",
            ),
            (
                f"API p99 < {P99_TARGET_MS:.0f} ms",
                p99 < P99_TARGET_MS and api_ok,
                f"p99 {p99:.2f} ms, max {max(latencies) * 1000:.2f} ms",
            ),
            (
                f"memory flat (round 2 / round 1 <= {MEMORY_GROWTH})",
                growth <= MEMORY_GROWTH,
                f"{growth:.3f}",
            ),
            (
                f"{len(out.downloads)} concurrent downloads identical",
                len(good) == len(out.downloads),
                f"{len(good)} match sha1 {out.expected_sha1[:12]}...",
            ),
        ]
    )


async def exercise(
    args: argparse.Namespace, node: Node, daemon: DaemonProcess, panel: RecordingPanel
) -> Outcome:
    out = Outcome()
    servers = make_servers(node, args.servers, args.files)
    out.hwm_kib.append(("start", daemon.status_kib("VmHWM")))
    sampler = ClientProcess(
        {
            "mode": "sample",
            "url": daemon.url,
            "headers": auth_headers(),
            "interval": 0.01,
            "max_seconds": 900,
        },
        node.root,
    )
    await sampler.start()
    for label in ("after round 1", "after round 2"):
        await backup_round(daemon, panel, servers, out)
        out.hwm_kib.append((label, daemon.status_kib("VmHWM")))
    out.sample = await sampler.stop(timeout=30)
    await concurrent_downloads(daemon, node, out, args.downloads)
    out.hwm_kib.append(("after downloads", daemon.status_kib("VmHWM")))
    return out


async def run(args: argparse.Namespace) -> int:
    print(env_report())
    node = Node.fresh("load")
    panel = RecordingPanel()
    await panel.start()
    daemon = DaemonProcess(node, panel.url, max_concurrent=MAX_CONCURRENT)
    await daemon.start()
    try:
        out = await exercise(args, node, daemon, panel)
    finally:
        code = await daemon.stop()
        await panel.stop()
    ok = summarize(node, panel, out)
    errors = daemon.error_lines()
    print(f"\ndaemon exit code {code}, error lines in its log: {len(errors)}")
    for line in errors[:5]:
        print("  " + line[:300])
    print(f"\nSUMMARY  load: {verdict(ok and not errors)}")
    return 0 if ok and not errors else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--files", type=int, default=200, help="per server")
    parser.add_argument("--downloads", type=int, default=200)
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
