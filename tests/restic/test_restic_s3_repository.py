"""A restic repository in moto's S3 server (``s3:http://127.0.0.1:PORT/bucket``): restic's own
S3 back end, credentials passed through ``environment``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon_helpers import Node, Panel, auth, download_claims, new_uuid, sign
from tests.support.restic_helpers import needs_restic, oracle, restic_backups, snapshots
from tests.support.s3_helpers import tree_digest

pytestmark = needs_restic
MIB = 1024 * 1024


async def test_backup_download_and_delete_with_the_repository_in_s3(
    start_daemon: Callable[..., Any],
    panel: Panel,
    node: Node,
    tmp_path: Path,
    moto_endpoint: str,
    bucket: str,
    s3_admin: Any,
) -> None:
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    backups = restic_backups(tmp_path, f"s3:{moto_endpoint}/{bucket}/restic", environment=env)
    assert oracle(backups["restic"], "init").returncode == 0  # a remote one is never created
    d = await start_daemon(remote=panel.url, **backups)
    server = node.random_server(2 * MIB, files=3)
    backup = new_uuid()
    assert (await d.post_backup(server, backup))[0] == 202
    report = (await panel.wait_report(backup, timeout=90)).json
    assert report["successful"] is True
    (snap,) = snapshots(backups["restic"], f"backup:{backup}")
    assert snap["id"].startswith(report["checksum"])
    keys = [o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("restic/data/") for k in keys)

    token = sign(download_claims(server, backup))
    async with d.request("GET", "/download/backup", params={"token": token}) as r:
        assert r.status == 200
        body = await r.read()
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xzf", "-", "-C", str(out)], input=body, check=True)
    assert tree_digest(out) == tree_digest(node.data / server)

    async with d.request("DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()) as r:
        assert r.status == 204
    async with d.request("DELETE", f"/api/servers/{server}/backup/{backup}", headers=auth()) as r:
        assert r.status == 404
