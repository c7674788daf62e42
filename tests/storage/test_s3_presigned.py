"""The stock panel's S3 flow, against a test panel that does what the real one does: it opens
the multipart upload with boto3, presigns one UploadPart URL per part for
``GET /api/remote/backups/{uuid}?size=``, and completes (or aborts) the upload when the node
reports the ETags."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.s3_helpers import (
    MIB,
    SERVER_UUID,
    FaultProxy,
    admin_client,
    extract_with_tar,
    tree_digest,
)
from wingsbak.storage.presigned import PresignedUploadError, upload_via_panel

TOKEN = "node-token-id.node-token"
PART_SIZE = 5 * MIB


@dataclass
class PanelDouble:
    url: str
    bucket: str
    uploads: dict[str, str] = field(default_factory=dict)  # backup uuid -> upload id
    reports: list[dict[str, Any]] = field(default_factory=list)
    wrong_part_count: bool = False

    def key(self, backup: str) -> str:
        return f"{SERVER_UUID}/{backup}.tar.gz"


@pytest.fixture
async def panel(
    moto_endpoint: str, fault_proxy: FaultProxy, bucket: str
) -> AsyncIterator[PanelDouble]:
    s3 = admin_client(moto_endpoint)
    # URLs point at the fault proxy, so that part PUTs can be made to fail.
    presigner = admin_client(fault_proxy.endpoint)
    state = PanelDouble(url="", bucket=bucket)

    def authorized(request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPForbidden()

    async def part_urls(request: web.Request) -> web.Response:
        authorized(request)
        backup = request.match_info["uuid"]
        size = int(request.query["size"])
        created = await asyncio.to_thread(
            s3.create_multipart_upload,
            Bucket=bucket,
            Key=state.key(backup),
            ContentType="application/x-gzip",
        )
        state.uploads[backup] = created["UploadId"]
        count = math.ceil(size / PART_SIZE) + (1 if state.wrong_part_count else 0)
        urls = [
            presigner.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": bucket,
                    "Key": state.key(backup),
                    "UploadId": created["UploadId"],
                    "PartNumber": n,
                },
                ExpiresIn=3600,
            )
            for n in range(1, count + 1)
        ]
        return web.json_response({"parts": urls, "part_size": PART_SIZE})

    async def report(request: web.Request) -> web.Response:
        authorized(request)
        backup = request.match_info["uuid"]
        body = await request.json()
        state.reports.append(body)
        upload_id = state.uploads.pop(backup)
        if body["successful"]:
            parts = [{"ETag": p["etag"], "PartNumber": p["part_number"]} for p in body["parts"]]
            await asyncio.to_thread(
                s3.complete_multipart_upload,
                Bucket=bucket,
                Key=state.key(backup),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        else:
            await asyncio.to_thread(
                s3.abort_multipart_upload,
                Bucket=bucket,
                Key=state.key(backup),
                UploadId=upload_id,
            )
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/api/remote/backups/{uuid}", part_urls)
    app.router.add_post("/api/remote/backups/{uuid}", report)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def panel_headers() -> dict[str, str]:
    return {
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/vnd.pterodactyl.v1+json",
        "Content-Type": "application/json",
    }


async def report(panel: PanelDouble, backup: str, body: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{panel.url}/api/remote/backups/{backup}", json=body, headers=panel_headers()
        ) as resp,
    ):
        assert resp.status == 204


def async_part_urls(panel: PanelDouble, backup: str, temp_dir: Path, seen: list[list[str]]) -> Any:
    async def get_part_urls(size: int) -> tuple[list[str], int]:
        # While the panel is asked, the temporary archive exists.
        seen.append([p.name for p in temp_dir.iterdir()])
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{panel.url}/api/remote/backups/{backup}",
                params={"size": str(size)},
                headers=panel_headers(),
            ) as resp,
        ):
            data = await resp.json()
        return data["parts"], data["part_size"]

    return get_part_urls


async def test_presigned_flow_gives_a_correct_object_and_leaves_no_temp_file(
    panel: PanelDouble, fault_proxy: FaultProxy, big_tree: Path, tmp_path: Path
) -> None:
    temp_dir = tmp_path / "backups"
    temp_dir.mkdir()
    backup = str(uuid.uuid4())
    seen: list[list[str]] = []

    upload = await upload_via_panel(
        big_tree, backup, async_part_urls(panel, backup, temp_dir, seen), temp_dir=temp_dir
    )

    assert len(seen) == 1 and len(seen[0]) == 1
    assert seen[0][0].startswith(f".backup-{backup}.tar.gz.") and seen[0][0].endswith(".part")
    assert list(temp_dir.iterdir()) == []
    result = upload.archive
    assert [p["part_number"] for p in upload.parts] == [1, 2, 3, 4]
    # Every PUT was a plain one with the archive's content type and an exact length.
    for _n, _upload, ctype, length, te in fault_proxy.plan.seen:
        assert ctype == "application/x-gzip" and te == "" and int(length) <= PART_SIZE
    await report(
        panel,
        backup,
        {
            "checksum": result.checksum,
            "checksum_type": result.checksum_type,
            "size": result.size,
            "successful": True,
            "parts": upload.parts,
        },
    )

    s3 = admin_client(fault_proxy.endpoint)
    data = s3.get_object(Bucket=panel.bucket, Key=panel.key(backup))["Body"].read()
    assert len(data) == result.size
    assert hashlib.sha1(data).hexdigest() == result.checksum
    extract_with_tar(data, tmp_path / "restored")
    assert tree_digest(tmp_path / "restored") == tree_digest(big_tree)
    assert not s3.list_multipart_uploads(Bucket=panel.bucket).get("Uploads")


@pytest.mark.parametrize("mode", ["500", "drop"])
async def test_presigned_part_failing_twice_is_reread_and_resent(
    panel: PanelDouble, fault_proxy: FaultProxy, big_tree: Path, tmp_path: Path, mode: str
) -> None:
    fault_proxy.plan.fail_parts = 2
    fault_proxy.plan.mode = mode
    backup = str(uuid.uuid4())

    def get_part_urls(size: int) -> tuple[list[str], int]:
        # A plain function works too (it is run in a worker thread).
        request = urllib.request.Request(
            f"{panel.url}/api/remote/backups/{backup}?size={size}", headers=panel_headers()
        )
        with urllib.request.urlopen(request) as resp:
            data = json.load(resp)
        return data["parts"], data["part_size"]

    upload = await upload_via_panel(
        big_tree, backup, get_part_urls, temp_dir=tmp_path, concurrency=1, backoff=0.01
    )
    assert fault_proxy.plan.failed == 2
    assert len(fault_proxy.plan.bodies[1]) == 3 and len(set(fault_proxy.plan.bodies[1])) == 1
    assert list(tmp_path.iterdir()) == []
    await report(panel, backup, {"successful": True, "parts": upload.parts})
    s3 = admin_client(fault_proxy.endpoint)
    data = s3.get_object(Bucket=panel.bucket, Key=panel.key(backup))["Body"].read()
    assert hashlib.sha1(data).hexdigest() == upload.archive.checksum


async def test_presigned_failure_raises_one_error_and_removes_the_temp_file(
    panel: PanelDouble, fault_proxy: FaultProxy, big_tree: Path, tmp_path: Path
) -> None:
    fault_proxy.plan.fail_parts = 10_000
    backup = str(uuid.uuid4())
    with pytest.raises(PresignedUploadError) as caught:
        await upload_via_panel(
            big_tree,
            backup,
            async_part_urls(panel, backup, tmp_path, []),
            temp_dir=tmp_path,
            attempts=2,
            backoff=0.01,
        )
    message = str(caught.value)
    assert "after 2 attempts" in message and "Signature" not in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []
    # The daemon then reports the failure, and the panel aborts the upload.
    await report(panel, backup, {"successful": False, "parts": None})
    s3 = admin_client(fault_proxy.endpoint)
    assert not s3.list_multipart_uploads(Bucket=panel.bucket).get("Uploads")


async def test_a_part_plan_that_does_not_fit_the_size_is_refused(
    panel: PanelDouble, big_tree: Path, tmp_path: Path
) -> None:
    panel.wrong_part_count = True
    backup = str(uuid.uuid4())
    with pytest.raises(PresignedUploadError, match="expected 4"):
        await upload_via_panel(
            big_tree, backup, async_part_urls(panel, backup, tmp_path, []), temp_dir=tmp_path
        )
    assert list(tmp_path.iterdir()) == []


async def test_cancelling_while_archiving_removes_the_temp_file(
    big_tree: Path, tmp_path: Path
) -> None:
    async def never_called(size: int) -> tuple[list[str], int]:
        raise AssertionError("the archive was not cancelled")

    task = asyncio.create_task(
        upload_via_panel(big_tree, str(uuid.uuid4()), never_called, temp_dir=tmp_path)
    )
    while not any(tmp_path.iterdir()):  # the temporary archive is being written
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(tmp_path.iterdir()) == []
