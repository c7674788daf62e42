"""api.ssl.enabled: the daemon serves HTTPS with the configured certificate and key."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bench.tlscert import self_signed_certificate
from wingsbak.config import ConfigError, parse_config
from wingsbak.daemon import _ssl_context
from wingsbak.daemon import build_app as create_app


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return self_signed_certificate(tmp_path)


async def test_https_with_the_configured_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    cfg = parse_config(
        {
            "token": "tls-test-token",
            "api": {"ssl": {"enabled": True, "cert": str(cert), "key": str(key)}},
            "system": {"data": str(tmp_path / "v"), "backup_directory": str(tmp_path / "b")},
        }
    )
    (tmp_path / "v").mkdir()
    (tmp_path / "b").mkdir()
    runner = web.AppRunner(create_app(cfg))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_ssl_context(cfg))
    await site.start()
    port = runner.addresses[0][1]
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=trust) as r:
                assert r.status == 200
            # Plain HTTP on the TLS port gets no answer from the API.
            with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
                async with http.get(
                    f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=5)
                ) as r:
                    assert r.status != 200
    finally:
        await runner.cleanup()


def test_tls_without_a_readable_key_is_refused(tmp_path: Path) -> None:
    cert, _key = _self_signed(tmp_path)
    with pytest.raises(ConfigError, match=r"api\.ssl\.key"):
        parse_config({"api": {"ssl": {"enabled": True, "cert": str(cert), "key": "/nope"}}})
