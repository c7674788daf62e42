"""Faults of issue 7: S3 answering 500 or dropping the connection on a fraction of part
uploads (several seeds), and the panel refusing connections for a long time while several
backups finish."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import random
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from tests.support.daemon_helpers import Daemon, Node, Panel, new_uuid, wait_until
from tests.support.s3_helpers import (
    FaultProxy,
    answer_internal_error,
    extract_with_tar,
    tree_digest,
)
from wingsbak.appkeys import JOBS, OUTBOX
from wingsbak.storage.bucket import NodeBucket

MIB = 1024 * 1024


class FlakyS3(FaultProxy):
    """A real proxy in front of moto that makes a seeded fraction of UploadPart requests fail:
    a 500 answer, the connection dropped before forwarding, or the part forwarded (so S3 has
    it) and the connection dropped before the answer."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.rng = random.Random(0)
        self.rate = 0.0
        self.modes: tuple[str, ...] = ("500",)
        self.lock = threading.Lock()
        self.parts = 0
        self.faults: dict[str, int] = {}

    def arm(self, seed: int, rate: float, modes: tuple[str, ...]) -> None:
        with self.lock:
            self.rng = random.Random(seed)
            self.rate, self.modes, self.parts, self.faults = rate, modes, 0, {}

    def intercept_part(self, handler: Any, query: dict[str, list[str]], body: bytes) -> bool:
        with self.lock:
            self.parts += 1
            mode = self.rng.choice(self.modes) if self.rng.random() < self.rate else ""
            if mode:
                self.faults[mode] = self.faults.get(mode, 0) + 1
        if not mode:
            return False
        if mode == "500":
            answer_internal_error(handler)
            return True
        if mode == "after":  # S3 stores the part; the client never hears so
            conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
            try:
                headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
                conn.request("PUT", handler.path, body=body, headers=headers)
                conn.getresponse().read()
            finally:
                conn.close()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
        return True


@pytest.fixture(scope="module")
def flaky_s3(moto_endpoint: str) -> Iterator[FlakyS3]:
    proxy = FlakyS3(moto_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def s3_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 13 MiB, mostly incompressible: three parts of 5 MiB."""
    root = tmp_path_factory.mktemp("s3tree") / "root"
    (root / "world").mkdir(parents=True)
    for i in range(2):
        (root / "world" / f"r.{i}.mca").write_bytes(random.Random(i).randbytes(6 * MIB))
    (root / "logs").mkdir()
    (root / "logs" / "latest.log").write_text("[12:00:00] Done\n" * 40000)
    (root / "server.properties").write_text("motd=hello\n")
    return root


# (seed, fraction of part requests that fail, failure modes)
PLANS = [
    (1, 1 / 3, ("500",)),
    (2, 1 / 3, ("drop",)),
    (3, 1 / 3, ("after",)),
    (4, 0.5, ("500", "drop", "after")),
    (5, 0.9, ("500", "drop", "after")),
]


@pytest.mark.parametrize(("seed", "rate", "modes"), PLANS, ids=[f"seed{p[0]}" for p in PLANS])
async def test_flaky_s3_gives_an_identical_object_or_a_failure(
    start_daemon,
    node: Node,
    panel: Panel,
    flaky_s3: FlakyS3,
    bucket: str,
    s3_admin: Any,
    s3_tree: Path,
    tmp_path: Path,
    seed: int,
    rate: float,
    modes: tuple[str, ...],
):
    def s3(raw: dict[str, Any]) -> None:
        raw["system"]["backups"]["s3"] = {
            "bucket": bucket,
            "endpoint": flaky_s3.endpoint,
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "path_style": True,
            "concurrency": 2,
        }
        raw["system"]["backups"]["store"] = "s3"

    d: Daemon = await start_daemon(remote=panel.url, config_hook=s3)
    jobs = d.app[JOBS]
    # The node's own retry policy (5 attempts), with pauses shortened for the test.
    jobs.stores.chosen.storage = NodeBucket(d.cfg.system.backups.s3, backoff=0.02)
    server = new_uuid()
    shutil.copytree(s3_tree, node.data / server)
    backup = new_uuid()
    key = f"{server}/{backup}.tar.gz"
    flaky_s3.arm(seed, rate, modes)
    status, _ = await d.post_backup(server, backup, adapter="wings")
    assert status == 202
    report = (await panel.wait_report(backup, timeout=60)).json
    assert flaky_s3.parts >= 3 and sum(flaky_s3.faults.values()) >= 1, flaky_s3.faults
    assert s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    if report["successful"]:
        body = s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha1(body).hexdigest() == report["checksum"]
        assert len(body) == report["size"]
        extract_with_tar(body, tmp_path / "out")
        assert tree_digest(tmp_path / "out") == tree_digest(s3_tree)
    else:
        assert report["size"] == 0 and report["checksum"] == ""
        with pytest.raises(ClientError):
            s3_admin.head_object(Bucket=bucket, Key=key)
    await asyncio.sleep(0.1)
    assert len(panel.reports(backup)) == 1


# -- the panel down for "minutes" ----------------------------------------------------------


class CountingPanel(Panel):
    """The recording panel, also noting which requests it answered with a 2xx."""

    accepted: list[str]

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        if not hasattr(self, "accepted"):
            self.accepted = []
        if response.status < 300:
            self.accepted.append(request.path)
        return response


async def test_panel_refusing_connections_for_long_then_each_report_once(start_daemon, node: Node):
    panel = CountingPanel()  # its port is reserved but nothing listens: connection refused
    try:
        d: Daemon = await start_daemon(
            remote=panel.url, report_retry_initial=0.005, report_retry_max=0.02, max_concurrent=2
        )
        outbox = d.app[OUTBOX]
        servers = [node.random_server(64 * 1024, files=2) for _ in range(4)]
        dangling = new_uuid()  # a server holding only a dangling symlink
        (node.data / dangling).mkdir()
        (node.data / dangling / "world").symlink_to("/nonexistent")
        backups = {new_uuid(): s for s in servers for _ in range(2)}
        backups[new_uuid()] = dangling
        for backup, server in backups.items():
            assert (await d.post_backup(server, backup))[0] == 202
        await d.wait_idle()
        # Every report has been tried many times against the closed port: the equivalent of
        # minutes of backoff at the real retry ceiling.
        await wait_until(
            lambda: (
                len(outbox._pending) == len(backups)
                and all(r.attempts >= 20 for r in outbox._pending.values())
            ),
            "many refused attempts",
            timeout=30.0,
        )
        assert panel.requests == []

        panel.fail_first = 3  # and when it comes back, it stumbles a few times (500)
        await panel.start()
        await wait_until(lambda: len(outbox._pending) == 0, "the outbox to empty", timeout=30.0)
        await asyncio.sleep(0.3)
        for backup, server in backups.items():
            path = f"/api/remote/backups/{backup}"
            assert panel.accepted.count(path) == 1, (backup, panel.accepted)
            body = panel.reports(backup)[-1].json
            assert body["successful"] is True
            archive = node.archive(server, backup)
            assert hashlib.sha1(archive.read_bytes()).hexdigest() == body["checksum"]
        assert len(panel.accepted) == len(backups)
        assert (node.backups / ".wingsbak-outbox.json").read_text() == "[]"
    finally:
        await panel.stop()
