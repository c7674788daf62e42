"""While a restore writes into a server's files, nothing starts the server (Wings suspends a
server during its own restores for the same reason): a power action that would start it is
answered 409, on Wings' power route here and on the console socket (:mod:`wingsbak.wings.relay`).
What is let through for that server reaches Wings as wingsbak read it with Wings' own rules
(:mod:`wingsbak.wings.gojson`), or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from wingsbak.answers import check_bearer, error_response
from wingsbak.appkeys import CONFIG, JOBS
from wingsbak.log import get_logger
from wingsbak.wings import gojson
from wingsbak.wings.proxy import CONTINUE_OWED, forward, owe_continue, send_continue

log = get_logger(__name__)
T = TypeVar("T")

# Power actions that run a server: held while a restore writes into its files.
HELD_ACTIONS = frozenset({"start", "restart", "kill"})
HELD = "The server is being restored from a backup; it cannot be started until the restore ends."
# Larger bodies and frames are read off the event loop: one of many small values takes Python
# about a second per 2 MB.
INLINE_DECODE_BYTES = 16 * 1024


async def power(request: web.Request) -> web.StreamResponse:
    """``POST /api/servers/{server}/power``: Wings' route, except while the server is being
    restored (Wings suspends a server during its own restores for the same reason): the body
    is read as Wings' gin ``BindJSON`` reads it, an action that would start the server answers
    409, and anything else goes to Wings as read here, so that what Wings acts on is what was
    judged. A body Wings' decoder fails on is held too. A request without the node token is
    Wings' to refuse."""
    server = request.match_info["server"]
    if request.get(CONTINUE_OWED, False):
        try:
            check_bearer(request, request.app[CONFIG].token)
        except Exception:
            return await forward(request)  # Wings refuses it unread: its answer, and no 100
        # Wings reads the body of a request it lets through: the 100 is sent here, as the
        # body must be judged before Wings sees it (whatever starts meanwhile, a restore).
        await send_continue(request)
    body = await request.read()  # a few bytes of JSON (client_max_size bounds it)
    if not request.app[JOBS].is_restoring(server):
        return await forward(request, body)
    try:
        check_bearer(request, request.app[CONFIG].token)
    except Exception:
        return await forward(request, body)
    try:
        wanted = await decoded(gojson.power_request, body)
    except gojson.GoJSONError:
        log.info("power_held", server=server, action=None, reason="body not readable by Wings")
        return error_response(409, HELD)
    if wanted.action in HELD_ACTIONS:
        log.info("power_held", server=server, action=wanted.action)
        return error_response(409, HELD)
    return await forward(request, wanted.encode(), rewritten=True)


async def decoded(read: Callable[[bytes], T], data: bytes) -> T:
    """``read(data)``, off the event loop when ``data`` is large."""
    if len(data) <= INLINE_DECODE_BYTES:
        return read(data)
    return await asyncio.to_thread(read, data)


def add_routes(app: web.Application) -> None:
    """Wings' power route, before the pass-through's catch-all (wingsbak.wings.proxy)."""
    app.router.add_post(
        "/api/servers/{server}/power", power, name="wings-power", expect_handler=owe_continue
    )
