"""Restore URLs: SSRF refusals, and downloads from a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp import web
from restore_helpers import Serve, breaks_half_way, serves, snapshot

from wingsbak.archive import archive_to_file
from wingsbak.archive.extract import RestoreError, extract_archive
from wingsbak.download_source import DownloadError, open_restore_stream
from wingsbak.urlguard import UnsafeURL, check_restore_url

LOCAL = ["127.0.0.1"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[fec0::1]/",  # site-local (deprecated)
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "ftp://example.com/backup.tar.gz",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http:///nohost",
        "http://user:pw@example.com/",
    ],
)
def test_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL) as err:
        check_restore_url(url, [])
    assert str(err.value)
    assert isinstance(err.value, ValueError)


def test_allowlist_admits_names_addresses_and_blocks() -> None:
    check_restore_url("http://127.0.0.1:8080/x", ["127.0.0.1"])
    check_restore_url("http://127.0.0.5/x", ["127.0.0.0/8"])
    check_restore_url("http://localhost/x", ["LOCALHOST"])
    check_restore_url("http://[::1]/x", ["::1"])
    with pytest.raises(UnsafeURL):
        check_restore_url("http://10.0.0.1/", ["127.0.0.1"])


@pytest.fixture
def backup(tmp_path: Path) -> tuple[Path, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "world").mkdir()
    for i in range(8):
        (src / "world" / f"r{i}.mca").write_bytes(os.urandom(256 * 1024))
    (src / "server.properties").write_text("motd=hi\n")
    out = tmp_path / "b.tar.gz"
    archive_to_file(src, out)
    return src, out.read_bytes()


def download_and_restore(url: str, dest: Path) -> None:
    with open_restore_stream(url, LOCAL, timeout=10) as stream:
        extract_archive(stream, dest, bytes_total=stream.size)


async def test_download_restores_the_tree(
    tmp_path: Path, serve: Serve, backup: tuple[Path, bytes]
) -> None:
    src, body = backup
    url = await serve(serves(body))
    dest = tmp_path / "dest"
    await asyncio.to_thread(download_and_restore, url, dest)
    assert snapshot(dest) == snapshot(src)


async def test_download_that_breaks_half_way_fails_clearly(
    tmp_path: Path, serve: Serve, backup: tuple[Path, bytes]
) -> None:
    _, body = backup
    url = await serve(breaks_half_way(body))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=r"broke after \d+ of \d+ bytes") as err:
        await asyncio.to_thread(download_and_restore, url, dest)
    assert isinstance(err.value, RestoreError)
    assert not list(dest.rglob(".wingsbak-restore-*"))


async def test_refused_answers(tmp_path: Path, serve: Serve, backup: tuple[Path, bytes]) -> None:
    _, body = backup

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such key")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/")

    html = serves(body, "text/html")
    not_gzip = serves(b"PK\x03\x04 a zip file", "application/zip")
    cases = [(not_found, "404"), (html, "text/html"), (not_gzip, "first bytes")]
    for handler, message in cases:
        url = await serve(handler)
        with pytest.raises(DownloadError, match=message):
            await asyncio.to_thread(download_and_restore, url, tmp_path / "dest")
    # A redirect is followed only where the guard lets the first URL go: not inwards.
    url = await serve(redirect)
    with pytest.raises(UnsafeURL, match=r"169\.254\.169\.254.*link-local"):
        await asyncio.to_thread(download_and_restore, url, tmp_path / "dest")
    # Without the allowlist the same server is never contacted.
    with pytest.raises(UnsafeURL):
        await asyncio.to_thread(open_restore_stream, url, [])
