"""Which store a backup goes to, and old backups after the node switches stores.

The panel here does what the real ones do with its own bucket (the ``s3`` adapter): it opens
the multipart upload when the node asks ``GET /backups/{uuid}?size=``, and refuses a success
report for a backup whose upload it never opened (pterodactyl/panel answers 400; Pelican
throws). ``wings`` backups are the node's business: any report is taken."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.daemon_helpers import (
    Daemon,
    Node,
    Panel,
    Recorded,
    auth,
    download_claims,
    new_uuid,
    sign,
)
from tests.support.restic_helpers import needs_restic, oracle, restic_block
from tests.support.s3_helpers import s3_config

pytestmark = needs_restic
MIB = 1024 * 1024
PART_SIZE = 5 * MIB
_REPORT = re.compile(r"/api/remote/backups/([0-9a-f-]{36})")


@dataclass
class BucketOwningPanel(Panel):
    s3: Any = None
    bucket: str = ""
    s3_backups: set[str] = field(default_factory=set)  # made with the panel's s3 adapter
    uploads: dict[str, str] = field(default_factory=dict)

    async def _handle(self, request: web.Request) -> web.Response:
        match = _REPORT.fullmatch(request.path)
        if match is None or match.group(1) not in self.s3_backups:
            return await super()._handle(request)
        backup, raw = match.group(1), await request.read()
        body = json.loads(raw) if raw else None
        try:
            return await self._bucket_flow(request, backup, body)
        finally:  # recorded once answered: a test waiting for it sees the upload complete
            headers = dict(request.headers)
            self.requests.append(
                Recorded(request.method, request.path, request.query_string, headers, body)
            )
            self._event.set()

    async def _bucket_flow(self, request: web.Request, backup: str, body: Any) -> web.Response:
        key = f"{backup}.tar.gz"
        if request.method == "GET":
            created = await asyncio.to_thread(
                self.s3.create_multipart_upload, Bucket=self.bucket, Key=key
            )
            self.uploads[backup] = created["UploadId"]
            count = max(1, math.ceil(int(request.query["size"]) / PART_SIZE))
            urls = [
                self.s3.generate_presigned_url(
                    "upload_part",
                    Params={
                        "Bucket": self.bucket,
                        "Key": key,
                        "UploadId": created["UploadId"],
                        "PartNumber": n,
                    },
                )
                for n in range(1, count + 1)
            ]
            return web.json_response({"parts": urls, "part_size": PART_SIZE})
        if backup not in self.uploads:  # no GET ?size= first: the panel never opened one
            return web.json_response({"errors": [{"code": "BadRequest"}]}, status=400)
        parts = [{"ETag": p["etag"], "PartNumber": p["part_number"]} for p in body["parts"]]
        await asyncio.to_thread(
            self.s3.complete_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            UploadId=self.uploads.pop(backup),
            MultipartUpload={"Parts": parts},
        )
        return web.Response(status=204)


async def backed_up(d: Daemon, panel: Panel, server: str, adapter: str = "wings") -> dict:
    backup = new_uuid()
    if adapter == "s3":
        assert isinstance(panel, BucketOwningPanel)
        panel.s3_backups.add(backup)
    assert (await d.post_backup(server, backup, adapter=adapter))[0] == 202
    report = (await panel.wait_report(backup, timeout=60)).json
    assert report["successful"] is True, report
    report["uuid"] = backup
    return report


async def test_old_backups_stay_reachable_after_switching_stores(
    start_daemon: Callable[..., Any],
    node: Node,
    tmp_path: Path,
    moto_endpoint: str,
    bucket: str,
    s3_admin: Any,
) -> None:
    panel = BucketOwningPanel(s3=s3_admin, bucket=bucket)
    await panel.start()
    try:
        node_bucket = f"node-{bucket}"
        s3_admin.create_bucket(Bucket=node_bucket)
        common = {
            "s3": dataclasses.asdict(s3_config(moto_endpoint, node_bucket)),
            "restic": restic_block(tmp_path),
        }
        # Created first: the daemons below start one after the other on the same node.
        assert oracle(common["restic"], "init").returncode == 0
        server = node.random_server(MIB, files=2)
        made: dict[str, dict] = {}
        for store in ("local", "s3", "restic"):
            d = await start_daemon(remote=panel.url, store=store, **common)
            made[store] = await backed_up(d, panel, server)
        # The panel's own bucket: always the pre-signed flow, whatever the node's store.
        made["panel"] = await backed_up(d, panel, server, adapter="s3")
        assert made["panel"]["parts"]
        assert s3_admin.head_object(Bucket=bucket, Key=f"{made['panel']['uuid']}.tar.gz")

        assert made["local"]["checksum_type"] == "sha1"
        assert (node.backups / server / f"{made['local']['uuid']}.tar.gz").is_file()
        assert made["s3"]["parts"] is None  # a local-style report: the node completed it
        key = f"{server}/{made['s3']['uuid']}.tar.gz"
        assert s3_admin.head_object(Bucket=node_bucket, Key=key)["ContentLength"] > MIB
        assert made["restic"]["checksum_type"] == "restic"

        # The daemon now writes to restic; each older backup is found where it is.
        for store, status in (("local", 200), ("s3", 302), ("restic", 200)):
            token = sign(download_claims(server, made[store]["uuid"]))
            async with d.request(
                "GET", "/download/backup", params={"token": token}, allow_redirects=False
            ) as r:
                assert r.status == status, store
        for store in ("local", "s3", "restic"):
            backup = made[store]["uuid"]
            assert (await d.post_restore(server, backup, truncate_directory=True))[0] == 202
            restored = await panel.wait_report(backup, restore=True, timeout=60)
            assert restored.json == {"successful": True}, store
        for store in ("local", "s3", "restic"):
            path = f"/api/servers/{server}/backup/{made[store]['uuid']}"
            async with d.request("DELETE", path, headers=auth()) as r:
                assert r.status == 204, store
            async with d.request("DELETE", path, headers=auth()) as r:
                assert r.status == 404, store
    finally:
        await panel.stop()
