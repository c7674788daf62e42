"""The panel client against a real HTTP panel stand-in: the pre-signed part-URL request is
retried while the panel is briefly unavailable, and an answer that is not UTF-8 never stops a
report's delivery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from wingsbak.panel import Outbox, PanelClient, PanelStatus

Answer = Callable[[web.Request], web.Response]


@pytest.fixture
async def stand_in() -> AsyncIterator[Callable[[list[Answer]], object]]:
    """``await stand_in([answer, ...])`` -> (panel URL, requests seen): the n-th request gets
    the n-th answer (the last one repeats)."""
    runners: list[web.AppRunner] = []

    async def start(answers: list[Answer]) -> tuple[str, list[str]]:
        seen: list[str] = []

        async def handle(request: web.Request) -> web.Response:
            seen.append(f"{request.method} {request.path_qs}")
            return answers[min(len(seen), len(answers)) - 1](request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}", seen

    yield start  # type: ignore[misc]
    for runner in runners:
        await runner.cleanup()


def status(code: int, body: bytes = b"") -> Answer:
    return lambda _r: web.Response(status=code, body=body)


def part_urls(_r: web.Request) -> web.Response:
    return web.json_response({"parts": ["http://s3.example/p1"], "part_size": 5 * 1024 * 1024})


async def test_part_urls_are_asked_again_while_the_panel_is_briefly_down(stand_in) -> None:
    url, seen = await stand_in([status(502), status(429), part_urls])
    client = PanelClient(url, "id", "token")
    try:
        urls, part_size = await client.get_part_urls("b", 123, backoff=0.01)
    finally:
        await client.close()
    assert (urls, part_size) == (["http://s3.example/p1"], 5 * 1024 * 1024)
    assert seen == ["GET /api/remote/backups/b?size=123"] * 3


async def test_a_refused_part_url_request_is_not_asked_again(stand_in) -> None:
    url, seen = await stand_in([status(400, b'{"errors": []}')])
    client = PanelClient(url, "id", "token")
    try:
        with pytest.raises(PanelStatus) as refused:
            await client.get_part_urls("b", 123, backoff=0.01)
    finally:
        await client.close()
    assert refused.value.status == 400
    assert len(seen) == 1


async def test_an_answer_that_is_not_utf8_does_not_stop_the_delivery(
    stand_in, tmp_path: Path
) -> None:
    url, seen = await stand_in([status(500, b"\xff\xfe bad gateway \xc3"), status(204)])
    outbox = Outbox(PanelClient(url, "id", "token"), tmp_path, retry_initial=0.01, retry_max=0.02)
    await outbox.load()
    try:
        await outbox.send("POST", "/backups/b", {"successful": True})
        assert await outbox.drain(timeout=30)
    finally:
        await outbox.close()
        await outbox.client.close()
    assert seen == ["POST /api/remote/backups/b"] * 2
    assert outbox.delivered == 1
