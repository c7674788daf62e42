"""``/api/servers/{server}/ws`` in front of Wings: the console socket is Wings'; it is relayed
frame for frame both ways (text, binary, close codes), and wingsbak joins in.

It reads the client's ``auth`` messages (they go on to Wings too) and verifies the JWT itself,
so that its backup events reach the client in Wings' envelope when that token allows them
(:class:`wingsbak.http.ws.EventSession` gates them, as in standalone mode). A ``set state``
that would start a server being restored is not forwarded; the client gets a ``daemon error``.
"""

from __future__ import annotations

import json

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from wingsbak.errors import TokenRejected
from wingsbak.http.front import HELD, HELD_ACTIONS, UNREACHABLE, forwarded_headers
from wingsbak.http.middleware import error_response
from wingsbak.http.state import CONFIG, JOBS, WINGS
from wingsbak.http.ws import EventSession, joined_events, parse_message, verify_socket_token
from wingsbak.log import get_logger
from wingsbak.node_identity import IDENTITY

log = get_logger(__name__)

# Larger than anything Wings sends in one message (console output comes line by line).
MAX_MESSAGE = 4 * 1024 * 1024
# Close codes an endpoint may send (RFC 6455 7.4); others (1005, 1006, ...) become 1011.
_SENDABLE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, *range(3000, 5000)}


def _close_code(code: int | None) -> int:
    if code is None:
        return 1011
    return code if code in _SENDABLE else 1011


def _handshake_headers(request: web.Request) -> CIMultiDict[str]:
    # The client library makes its own handshake with Wings; the rest (Origin, which Wings
    # checks against the panel's address, cookies, forwarded addresses) goes through.
    headers = forwarded_headers(request)
    for name in list(headers):
        if name.lower().startswith("sec-websocket-"):
            headers.popall(name, None)
    return headers


async def relay(request: web.Request) -> web.StreamResponse:
    server = request.match_info["server"]
    wings = request.app[WINGS]
    try:
        upstream = await wings.session.ws_connect(
            URL(wings.url(request.raw_path), encoded=True),
            headers=_handshake_headers(request),
            max_msg_size=MAX_MESSAGE,
            autoping=True,
        )
    except aiohttp.WSServerHandshakeError as exc:
        # Wings refused the socket (an unknown server, a bad origin): the same status here.
        return error_response(exc.status, exc.message or "Wings refused the websocket.")
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("wings_unreachable", path=request.path, error=repr(exc))
        return error_response(502, UNREACHABLE)
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30.0)
    try:
        await ws.prepare(request)
    except Exception:
        await upstream.close()
        raise
    session = EventSession(ws, server, request.app[CONFIG].token)
    try:
        async with joined_events(request, session, _from_wings(upstream, ws)):
            await _to_wings(request, ws, upstream, session)
    finally:
        if not upstream.closed:
            await upstream.close(code=_close_code(ws.close_code))
    return ws


async def _to_wings(
    request: web.Request,
    ws: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    session: EventSession,
) -> None:
    jobs = request.app[JOBS]
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await upstream.send_bytes(msg.data)
            continue
        if msg.type != WSMsgType.TEXT:
            continue
        message = parse_message(msg.data)
        if message is not None:
            name, args = message
            if name == "auth":
                _join_auth(session, "".join(args or []))
                identity = request.app[IDENTITY]
                if identity.pending:  # Wings still holds the earlier token: signed for it
                    args = identity.auth_args_for_wings(args or [])
                    await upstream.send_str(json.dumps({"event": "auth", "args": args}))
                    continue
            elif (
                name == "set state"
                and "".join(args or []) in HELD_ACTIONS
                and session.server in jobs.restores
            ):
                await session.send("daemon error", HELD)
                continue
        await upstream.send_str(msg.data)


def _join_auth(session: EventSession, token: str) -> None:
    """Wings answers the ``auth`` itself; wingsbak only learns from it which events this
    client may have. A refused re-auth leaves the earlier token in force, as in Wings."""
    try:
        session.claims = verify_socket_token(token, session.key, session.server)
    except TokenRejected:
        pass


async def _from_wings(
    upstream: aiohttp.ClientWebSocketResponse, ws: web.WebSocketResponse
) -> None:
    async for msg in upstream:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    # Wings closed (or went away): the client learns it with Wings' close code.
    await ws.close(code=_close_code(upstream.close_code))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/servers/{server}/ws", relay, name="wings-ws")

