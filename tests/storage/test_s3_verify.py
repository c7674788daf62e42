"""Verified backups in the node's bucket (moto over HTTP), against the real daemon process:
the checksum the panel was given is kept beside each object; the schedule reads every
object whole and finds one damaged in the bucket and one whose checksum no longer matches;
``wingsbak verify`` finds the same; a deleted backup takes its checksum along."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, auth, new_uuid, wait_until
from tests.support.s3_helpers import s3_config
from tests.support.trust_helpers import log_events, metrics, wait_event
from wingsbak.archive import archive_to_file

MIB = 1024 * 1024


async def test_node_bucket_objects_are_read_whole_and_damage_is_found(
    daemon_process, node: Node, panel: Panel, moto_endpoint: str, bucket: str, s3_admin: Any
) -> None:
    proc: DaemonProcess = daemon_process(
        remote=panel.url,
        store="s3",
        s3=asdict(s3_config(moto_endpoint, bucket)),
        verify_interval=0.3,
        verify_read_limit=0,
    )
    await proc.start()
    made = []
    for size in (12 * MIB, 100_000, 100_000):  # the first in three parts
        server = node.random_server(size, files=3)
        backup = new_uuid()
        assert await proc.post_backup(server, backup) == 202
        report = (await panel.wait_report(backup, timeout=60)).json
        assert report["successful"] is True
        key = f"{server}/{backup}.tar.gz"
        # The checksum the panel was given, beside the object, as sha1sum -c reads it.
        recorded = s3_admin.get_object(Bucket=bucket, Key=key + ".sha1")["Body"].read()
        assert recorded == f"{report['checksum']}  {backup}.tar.gz\n".encode()
        made.append((server, backup, key))
    for server, backup, _key in made:
        line = await wait_event(proc.log_path, "backup_verified", backup=backup, store="s3")
        assert line["server"] == server and line["checksum"] == "sha1"

    (damaged_server, damaged, damaged_key), (mismatch_server, mismatch, mismatch_key), sound = made
    body = bytearray(s3_admin.get_object(Bucket=bucket, Key=damaged_key)["Body"].read())
    body[len(body) // 2] ^= 0x10
    s3_admin.put_object(Bucket=bucket, Key=damaged_key, Body=bytes(body))
    wrong = hashlib.sha1(b"something else").hexdigest()
    s3_admin.put_object(
        Bucket=bucket, Key=mismatch_key + ".sha1", Body=f"{wrong}  x.tar.gz\n".encode()
    )
    line = await wait_event(
        proc.log_path, "backup_corrupt", backup=damaged, server=damaged_server, store="s3"
    )
    assert line["location"] == damaged_key and "corrupt" in line["reason"]
    line = await wait_event(proc.log_path, "backup_corrupt", backup=mismatch, store="s3")
    assert "does not match its recorded sha1 checksum" in line["reason"]
    def sound_checks() -> int:
        lines = log_events(proc.log_path, "backup_verified")
        return len([e for e in lines if e["backup"] == sound[1]])

    seen = sound_checks()
    await wait_until(lambda: sound_checks() > seen, "the sound object checked again", 30)
    m = await metrics(proc.url)
    assert m['wingsbak_backup_corrupt_total{store="s3"}'] == 2
    assert m["wingsbak_backups_corrupt"] == 2
    # Never deleted by wingsbak.
    s3_admin.head_object(Bucket=bucket, Key=damaged_key)

    # On demand: by uuid, found in the bucket.
    cfg = str(node.root / "cfg.yml")
    rc, out = await verify_command("--config", cfg, damaged)
    assert rc == 1 and out.startswith(f"CORRUPT    s3     {damaged_server}/{damaged}"), out
    rc, out = await verify_command("--config", cfg, sound[1])
    assert rc == 0 and "sha1 matches" in out, out

    # The panel deletes the mismatching backup: its checksum goes with it, and it is no
    # longer counted as corrupt.
    path = f"/api/servers/{mismatch_server}/backup/{mismatch}"
    async with aiohttp.ClientSession() as s, s.delete(proc.url + path, headers=auth()) as r:
        assert r.status == 204
    keys = [o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if k.startswith(mismatch_key)]

    async def one_left() -> bool:
        return (await metrics(proc.url))["wingsbak_backups_corrupt"] == 1

    await wait_until(one_left, "the deleted backup to be forgotten", timeout=30)
    await proc.stop()


async def verify_command(*args: str) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wingsbak", "verify", *args, stdout=subprocess.PIPE
    )
    out, _ = await p.communicate()
    assert p.returncode is not None
    return p.returncode, out.decode()


def trickling_bucket(key: str, body: bytes, reading: asyncio.Event) -> web.Application:
    """A bucket holding one backup object that it sends at a byte a second after its first
    half: ListObjectsV2 answered in S3's shape (as moto's moto/s3/responses.py
    ``_bucket_response_get`` builds it), GetObject of anything else a 404 NoSuchKey."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response()
        if request.query.get("list-type") == "2":
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                "<Name>backups</Name><Prefix></Prefix><KeyCount>1</KeyCount>"
                "<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
                f"<Contents><Key>{key}</Key><LastModified>2026-12-06T00:00:00.000Z"
                f'</LastModified><ETag>"0"</ETag><Size>{len(body)}</Size>'
                "<StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"
            )
            return web.Response(text=xml, content_type="application/xml")
        if request.path != f"/backups/{key}":
            xml = "<Error><Code>NoSuchKey</Code><Message>none</Message></Error>"
            return web.Response(status=404, text=xml, content_type="application/xml")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-gzip"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        reading.set()
        for at in range(len(body) // 2, len(body)):
            await asyncio.sleep(1)
            await resp.write(body[at : at + 1])
        return resp

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    return app


async def test_a_stop_does_not_wait_for_an_object_read_at_a_byte_a_second(
    daemon_process, node: Node, panel: Panel, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "world.mca").write_bytes(os.urandom(2 * MIB))
    archive_to_file(src, tmp_path / "a.tar.gz")
    key = f"{new_uuid()}/{new_uuid()}.tar.gz"
    reading = asyncio.Event()
    runner = web.AppRunner(trickling_bucket(key, (tmp_path / "a.tar.gz").read_bytes(), reading))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}"
    s3 = {"bucket": "backups", "endpoint": endpoint, "path_style": True}
    s3 |= {"access_key_id": "testing", "secret_access_key": "testing"}
    proc: DaemonProcess = daemon_process(
        remote=panel.url, s3=s3, verify_interval=3600, verify_read_limit=0
    )
    try:
        await proc.start()
        await asyncio.wait_for(reading.wait(), 30)
        await asyncio.sleep(0.5)  # the check is now waiting inside a read
        assert await proc.stop(signal.SIGTERM, timeout=30) == 0
        # A read cut short by the stop is neither corruption nor a failed check.
        assert log_events(proc.log_path, "backup_corrupt") == []
        assert log_events(proc.log_path, "backup_not_verified") == []
    finally:
        await runner.cleanup()
