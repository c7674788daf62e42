"""The panel stand-in enforces the stock panels' rules (issue 13, item 7), and the daemon keeps
them: the remote API as pterodactyl/panel 706db62 and pelican-dev/panel 235c8fb answer it
(see panel_standin.py for the code each rule comes from)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.support.daemon_helpers import (
    NODE_TOKEN,
    PELICAN,
    PTERODACTYL,
    TOKEN_ID,
    Daemon,
    Node,
    Panel,
    new_uuid,
)
from tests.support.panel_standin import GIB, MIB

HEADERS = {
    "Authorization": f"Bearer {TOKEN_ID}.{NODE_TOKEN}",
    "Accept": "application/vnd.pterodactyl.v1+json",
}
GOOD = {"checksum": "ab" * 20, "checksum_type": "sha1", "size": 10, "successful": True}
FAILED = {"checksum": "", "checksum_type": "sha1", "size": 0, "successful": False}


async def call(
    panel: Panel, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, f"{panel.url}/api/remote{path}", json=body, headers=headers or HEADERS
        ) as r,
    ):
        return r.status, await r.json() if r.status != 204 else None


def refused(panel: Panel) -> list[int]:
    return [r.status for r in panel.take_rejections()]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({**GOOD, "successful": "yes"}, ["successful"]),
        ({k: v for k, v in GOOD.items() if k != "successful"}, ["successful"]),
        ({**GOOD, "checksum": ""}, ["checksum"]),
        ({**GOOD, "checksum_type": None}, ["checksum_type"]),
        ({**GOOD, "size": "ten"}, ["size"]),
        ({**GOOD, "size": None}, ["size"]),
        ({**GOOD, "parts": [{"etag": "x"}]}, ["parts.0.part_number"]),
        ({**GOOD, "parts": [{"part_number": 1}]}, ["parts.0.etag"]),
        ({**GOOD, "parts": "x"}, ["parts"]),
        ("not an object", ["successful"]),
    ],
)
async def test_report_validation(panel: Panel, body: Any, fields: list[str]) -> None:
    backup = new_uuid()
    panel.register(new_uuid(), backup)
    status, answer = await call(panel, "POST", f"/backups/{backup}", body)
    assert status == 422, answer
    assert answer["errors"][0]["detail"].endswith(f"{', '.join(fields)}.")
    assert refused(panel) == [422]
    assert not panel.backups[backup].completed_at


async def test_report_ownership_and_state(panel: Panel) -> None:
    server, mine, theirs = new_uuid(), new_uuid(), new_uuid()
    panel.register(server, mine)
    panel.register(server, theirs, node="AnotherNode12345")
    assert (await call(panel, "POST", f"/backups/{new_uuid()}", GOOD))[0] == 404
    assert (await call(panel, "POST", f"/backups/{theirs}", GOOD))[0] == 403
    assert (await call(panel, "POST", f"/backups/{mine}", FAILED))[0] == 204
    assert (await call(panel, "POST", f"/backups/{mine}", GOOD))[0] == 204  # failed: overwritten
    assert panel.backups[mine].is_successful and panel.backups[mine].checksum == "sha1:" + "ab" * 20
    assert (await call(panel, "POST", f"/backups/{mine}", GOOD))[0] == 400  # already successful
    assert (await call(panel, "POST", f"/backups/{mine}", GOOD, {"Accept": "x"}))[0] == 401
    bad = {"Authorization": f"Bearer {TOKEN_ID}.wrong"}
    assert (await call(panel, "POST", f"/backups/{mine}", GOOD, bad))[0] == 403
    assert refused(panel) == [404, 403, 400, 401, 403]


@pytest.mark.parametrize(("flavour", "status"), [(PTERODACTYL, 400), (PELICAN, 500)])
async def test_a_successful_s3_report_without_the_panels_upload_is_refused(
    panel: Panel, flavour: str, status: int
) -> None:
    panel.flavour = flavour
    backup = new_uuid()
    panel.register(new_uuid(), backup, disk="s3")
    assert (await call(panel, "POST", f"/backups/{backup}", {**GOOD, "parts": []}))[0] == status
    assert refused(panel) == [status]
    assert (await call(panel, "POST", f"/backups/{backup}", FAILED))[0] == 204  # nothing to abort


@pytest.mark.parametrize(
    ("flavour", "configured", "part_size"),
    [
        (PTERODACTYL, None, 5 * GIB),
        (PTERODACTYL, 0, 5 * GIB),
        (PTERODACTYL, 64 * MIB, 64 * MIB),
        (PELICAN, None, 128 * MIB),
        (PELICAN, 4 * MIB, 128 * MIB),  # outside 5 MiB..5 GiB: the default
        (PELICAN, 6 * GIB, 128 * MIB),
        (PELICAN, 5 * MIB, 5 * MIB),
    ],
)
async def test_part_urls(
    panel: Panel, flavour: str, configured: int | None, part_size: int
) -> None:
    panel.flavour, panel.max_part_size = flavour, configured
    server, backup = new_uuid(), new_uuid()
    panel.register(server, backup, disk="s3")
    status, answer = await call(panel, "GET", f"/backups/{backup}?size={2 * part_size + 1}")
    assert status == 200, answer
    assert (len(answer["parts"]), answer["part_size"]) == (3, part_size)
    assert ("max_concurrent_uploads" in answer) == (flavour == PELICAN)
    assert (await call(panel, "GET", f"/backups/{backup}"))[0] == 400  # no size
    assert (await call(panel, "GET", f"/backups/{backup}?size=abc"))[0] == 400
    wings = new_uuid()
    panel.register(server, wings)
    assert (await call(panel, "GET", f"/backups/{wings}?size=5"))[0] == 400  # not on S3
    assert (await call(panel, "POST", f"/backups/{backup}", FAILED))[0] == 204
    assert (await call(panel, "GET", f"/backups/{backup}?size=5"))[0] == 409  # complete
    assert refused(panel) == [400, 400, 400, 409]


@pytest.mark.parametrize("flavour", [PTERODACTYL, PELICAN])
async def test_restore_report_route(panel: Panel, flavour: str) -> None:
    panel.flavour = flavour
    theirs = new_uuid()
    panel.register(new_uuid(), theirs, node="AnotherNode12345")
    assert (await call(panel, "POST", f"/backups/{new_uuid()}/restore", {"successful": True}))[
        0
    ] == 404
    status, _ = await call(panel, "POST", f"/backups/{theirs}/restore", {"successful": True})
    # Pterodactyl does not look at the node here; Pelican does.
    assert status == (204 if flavour == PTERODACTYL else 403)
    assert refused(panel) == [404] + ([] if flavour == PTERODACTYL else [403])


@pytest.mark.parametrize(("flavour", "max_part_size"), [(PTERODACTYL, None), (PELICAN, 5 * MIB)])
async def test_the_daemon_uploads_through_the_panels_s3_flow_as_each_panel_wants(
    start_daemon: Callable[..., Any],
    panel: Panel,
    node: Node,
    flavour: str,
    max_part_size: int | None,
) -> None:
    """No node credentials: the node asks the panel for part URLs (``GET ?size=``), PUTs the
    parts, and reports their ETags; the panel completes the upload with them."""
    panel.flavour, panel.max_part_size = flavour, max_part_size
    d: Daemon = await start_daemon(remote=panel.url, compression_level="none")
    server = node.server({f"region-{i}.mca": os.urandom(4 * MIB) for i in range(3)})
    backup = new_uuid()
    assert (await d.post_backup(server, backup, adapter="s3"))[0] == 202
    report = (await panel.wait_report(backup, timeout=60)).json
    assert report["successful"] is True, report
    parts = len(report["parts"])
    assert parts == (1 if flavour == PTERODACTYL else 3), report["parts"]
    record = panel.backups[backup]
    assert record.is_successful and record.bytes == report["size"] > 12 * MIB
    assert [r.path for r in panel.requests if r.method == "GET"] == [
        f"/api/remote/backups/{backup}"
    ]
