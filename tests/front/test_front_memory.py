"""Bodies larger than wingsbak's memory go through it both ways: the daemon is a real process
and its peak resident set (VmHWM in /proc) stays flat while 192 MiB go up and come back."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.daemon_helpers import NODE_TOKEN, new_uuid
from tests.support.wings_standin import panel_file_token

MIB = 1024 * 1024
SIZE = 192 * MIB
# Far below the body size: a pass-through that held a body whole would exceed it.
GROWTH_LIMIT = 64 * MIB


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def pattern(size: int):
    block = hashlib.sha256(b"seed").digest() * (MIB // 32)
    for _ in range(size // MIB):
        yield block


async def test_large_upload_and_download_through_a_daemon_process_keep_memory_flat(
    daemon_process, wings, client
):
    daemon = daemon_process()
    daemon.config["api"]["upstream"] = wings.url
    await daemon.start()
    server = new_uuid()
    wings.server(server)
    bearer = {"Authorization": f"Bearer {NODE_TOKEN}"}
    async with client.get(daemon.url + "/api/system", headers=bearer) as r:
        assert r.status == 200  # Wings' answer, through the daemon
    assert daemon.proc is not None
    before = peak_rss(daemon.proc.pid)

    expected = hashlib.sha256()

    async def body():
        for block in pattern(SIZE):
            expected.update(block)
            yield block

    path = f"/api/servers/{server}/files/write?file=big.bin"
    async with client.post(
        daemon.url + path, data=body(), headers=bearer
    ) as r:
        assert r.status == 204, await r.text()
    assert wings.received("POST", f"/api/servers/{server}/files/write")[-1].body == {
        "sha256": expected.hexdigest(),
        "size": SIZE,
    }

    token = panel_file_token(server, "file-download", file_path="big.bin")
    got = hashlib.sha256()
    size = 0
    async with client.get(daemon.url + f"/download/file?token={token}") as r:
        assert r.status == 200
        async for chunk in r.content.iter_chunked(MIB):
            got.update(chunk)
            size += len(chunk)
    assert (size, got.hexdigest()) == (SIZE, expected.hexdigest())

    growth = peak_rss(daemon.proc.pid) - before
    assert growth < GROWTH_LIMIT, f"peak RSS grew by {growth / MIB:.0f} MiB"
    await daemon.stop()
