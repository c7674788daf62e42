"""GET /api/servers/{server}/ws, standalone: Wings' event socket, for the backup events (in
front of Wings the socket is Wings' own, relayed: :mod:`wingsbak.wings.relay`).

The client authenticates inside the socket with a panel-signed JWT
(``{"event": "auth", "args": [jwt]}``) and may re-authenticate with a fresh token before the
old one expires, as the panel's console does (:mod:`wingsbak.event_socket`). Matched against
pterodactyl/wings f1c5bbd and pelican-dev/wings 090841d (router/websocket/websocket.go,
listeners.go).
"""

from __future__ import annotations

import json

from aiohttp import WSMsgType, web

from wingsbak.appkeys import CONFIG, EVENTS
from wingsbak.event_socket import EventSession, joined_events
from wingsbak.http.validation import path_uuid, server_root_or_404

routes = web.RouteTableDef()


def parse_message(text: str) -> tuple[str, list[str] | None] | None:
    """``(event, args)`` of a client message ``{"event": name, "args": [string, ...]}``; None
    for anything that is not such an object. Args that are no list of strings (Wings' Go
    decoder refuses those) come back as None: an ``auth`` with them fails like an ``auth``
    without a token, any other such message is dropped as Wings drops it. Absent or null
    args are ``[]``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return None
    args = data.get("args")
    if args is None:
        return data["event"], []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return data["event"], None
    return data["event"], args


@routes.get("/api/servers/{server}/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    server = path_uuid(request, "server", "server")
    await server_root_or_404(request, server)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
    await ws.prepare(request)
    session = EventSession(ws, server, request.app[CONFIG].token)
    auth_timeout = request.app[CONFIG].api.websocket_auth_timeout
    async with joined_events(
        request.app[EVENTS], session, session.watch_expiry(), session.require_auth(auth_timeout)
    ):
        async for msg in ws:
            message = parse_message(msg.data) if msg.type == WSMsgType.TEXT else None
            if message is None:
                continue
            name, args = message
            if name == "auth":  # no token, or args that are no list of strings: a jwt error
                await session.authenticate("".join(args or []))
            elif args is not None:
                await session.refuse_if_invalid()
    return ws
