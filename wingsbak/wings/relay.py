"""``/api/servers/{server}/ws`` in front of Wings: the console socket is Wings'; it is relayed
frame for frame both ways (text, binary, close codes), and wingsbak joins in.

Its backup events reach a client in Wings' envelope only under a token Wings accepted on that
socket (:class:`WingsAuth`), as far as the token allows them (:class:`EventSession`). A socket
that has no ``auth success`` from Wings within ``api.websocket_auth_timeout`` is closed.

What the client sends is read as Wings reads it (:mod:`wingsbak.wings.gojson`). An ``auth`` goes on
to Wings as read here, so the token Wings judges is the one wingsbak judged. While the server
is being restored every frame does: a ``set state`` that would start it never reaches Wings
(it is answered as Wings answers a power action it refuses, :meth:`WingsAuth.held_answer`),
and a frame Wings' decoder could not read is dropped (as Wings drops it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from wingsbak.answers import error_response
from wingsbak.appkeys import CONFIG, EVENTS, JOBS
from wingsbak.errors import TokenRejected
from wingsbak.event_socket import (
    DENYLISTED,
    NO_CONNECT,
    NO_JWT,
    UUID_MISMATCH,
    EventSession,
    grants,
    joined_events,
    verify_socket_token,
)
from wingsbak.log import get_logger
from wingsbak.tokens import EXPIRED, decode_token
from wingsbak.wings import gojson
from wingsbak.wings.client import WINGS
from wingsbak.wings.hold import HELD, HELD_ACTIONS, decoded
from wingsbak.wings.identity import IDENTITY
from wingsbak.wings.proxy import UNREACHABLE, forwarded_headers, target

log = get_logger(__name__)

# Larger than anything Wings sends in one message (console output comes line by line).
MAX_MESSAGE = 4 * 1024 * 1024
# Close codes an endpoint may send (RFC 6455 7.4); others (1005, 1006, ...) become 1011.
_SENDABLE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, *range(3000, 5000)}
# Wings answers an auth at once (in milliseconds): an answer not seen by then will not come
# (Pelican drops a throttled auth without one). A client's frames wait at most this long.
AUTH_ANSWER_SECONDS = 5.0
# Wings' answers to an auth are short; longer messages (console output) are not looked into.
ANSWER_BYTES = 4096
# The permission each power action needs on the socket (router/websocket/websocket.go
# HandleInbound: kill is control.stop).
POWER_PERMISSIONS = {
    "start": "control.start",
    "stop": "control.stop",
    "restart": "control.restart",
    "kill": "control.stop",
}
# What Wings' SendErrorJson tells a token without admin.websocket.errors of any error.
UNEXPECTED = "an unexpected error was encountered while handling this request"


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
            URL(wings.url(target(request)), encoded=True),
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
    config = request.app[CONFIG]
    session = EventSession(ws, server, config.token)
    auth = WingsAuth(session)
    try:
        async with joined_events(
            request.app[EVENTS],
            session,
            _from_wings(upstream, ws, auth),
            session.require_auth(config.api.websocket_auth_timeout),
        ):
            await _to_wings(request, ws, upstream, auth)
    finally:
        if not upstream.closed:
            await upstream.close(code=_close_code(ws.close_code))
    return ws


async def _to_wings(
    request: web.Request,
    ws: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    auth: WingsAuth,
) -> None:
    jobs = request.app[JOBS]
    identity = request.app[IDENTITY]
    server = auth.session.server
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            frame: bytes = msg.data.encode()
        elif msg.type == WSMsgType.BINARY:
            frame = msg.data  # Pterodactyl Wings reads a binary frame as it reads a text one
        else:
            continue
        try:
            message: gojson.SocketMessage | None = await decoded(gojson.socket_message, frame)
        except gojson.GoJSONError:
            message = None
        restoring = jobs.is_restoring(server)
        if restoring:
            if message is None:  # Wings' decoder fails on it too: Wings would drop it
                log.debug("websocket_frame_held", server=server, reason="not readable by Wings")
                continue
            if message.event == "set state" and message.joined in HELD_ACTIONS:
                # debug: anyone who can open the socket can send these, token or not
                log.debug("power_held", server=server, action=message.joined, via="websocket")
                answer = auth.held_answer(message.joined)
                if answer is not None:
                    await auth.session.send(*answer)
                continue
        is_auth = message is not None and message.event == "auth"
        if is_auth:
            assert message is not None
            auth.sending(message.joined)
        if is_auth and identity.pending:  # Wings still holds the earlier token: signed for it
            assert message is not None
            args = identity.auth_args_for_wings(message.args or [])
            message = dataclasses.replace(message, args=args)
        if message is not None and (restoring or is_auth):
            frame = message.encode()  # what Wings reads is what was judged here
            if msg.type == WSMsgType.TEXT:
                await upstream.send_str(frame.decode("ascii"))
            else:
                await upstream.send_bytes(frame)
        elif msg.type == WSMsgType.TEXT:
            await upstream.send_str(msg.data)
        else:
            await upstream.send_bytes(frame)
        if is_auth:
            await auth.sent()


async def _from_wings(
    upstream: aiohttp.ClientWebSocketResponse, ws: web.WebSocketResponse, auth: WingsAuth
) -> None:
    try:
        async for msg in upstream:
            if msg.type == WSMsgType.TEXT:
                auth.heard(msg.data)  # before the client sees it: it may act on it at once
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
    finally:
        auth.wings_closed()
    # Wings closed (or went away): the client learns it with Wings' close code.
    await ws.close(code=_close_code(upstream.close_code))


Answer = tuple[str, str | None]  # an event of Wings' and its first arg (None: any)


def refusals(token: str, key: str) -> tuple[bool, set[Answer]]:
    """How Wings may refuse an ``auth`` with ``token`` (``NewTokenPayload`` in
    router/websocket/websocket.go), and whether it surely does. What wingsbak cannot judge
    is Wings' own: its denylist, and Pelican's scope check. The token's server is not looked
    at until a later message."""
    try:
        claims = decode_token(token, key, [])
    except TokenRejected as exc:
        # A bad signature or a claim Go cannot decode fail Wings' ParseToken too, with an error
        # that is no JWT error: Wings answers "daemon error". Expiry is a JWT error.
        return True, {("jwt error", EXPIRED) if exc.message == EXPIRED else ("daemon error", None)}
    if claims.get("iat") is None:
        return True, {("jwt error", DENYLISTED)}
    if not grants(claims, "websocket.connect"):
        return True, {("jwt error", NO_CONNECT)}
    possible: set[Answer] = {("jwt error", DENYLISTED)}
    if "websocket" not in str(claims.get("scope") or "").split(" "):
        possible.add(("jwt error", NO_CONNECT))
    return False, possible


@dataclass(frozen=True, slots=True)
class InForce:
    """What wingsbak can tell of the token Wings holds on a socket: ``claims`` of a token
    Wings accepted (not checked against the server: Wings looks at that later), or the JWT
    error Wings gave for it since (``refused``); neither when it cannot tell which token
    Wings holds."""

    claims: dict[str, Any] | None = None
    refused: str | None = None


_UNKNOWN = InForce()


class WingsAuth:
    """What Wings' answers tell of the token in force on one relayed socket. Backup events
    flow under a token Wings answered ``auth success`` to and wingsbak's own check accepts
    (:func:`verify_socket_token`); they stop at Wings' ``jwt error`` or ``token expired``.

    Wings handles each message in a goroutine of its own, so the answers to two auths could
    come in either order: one auth at a time is in flight, the client's later frames waiting
    for its answer. Wings answers every auth it reads at once; one not answered within
    ``AUTH_ANSWER_SECONDS`` was dropped (Pelican drops binary frames, frames over 32 KiB and
    throttled messages). An auth Wings might have accepted, ended by a refusal that might have
    been another message's (Wings' own events are refused too when its token is no longer
    valid), is *unproven* for as long: a success meanwhile may be its, and grants nothing."""

    def __init__(self, session: EventSession) -> None:
        self.session = session
        self._token: str | None = None  # the auth in flight
        self._certain = False  # Wings surely refuses it
        self._refusals: set[Answer] = set()  # the answers Wings may refuse it with
        self._answered = asyncio.Event()
        self._unproven: list[float] = []  # when such auths ended (monotonic)
        self._wings_gone = False
        self.in_force = _UNKNOWN  # meaningful once the session is authenticated

    def sending(self, token: str) -> None:
        """The client's ``auth`` is about to go to Wings. Set before it is sent: Wings may
        answer before the sender runs again, and that answer must find the auth in flight."""
        if self._wings_gone:
            return
        self._token = token
        self._certain, self._refusals = refusals(token, self.session.key)
        self._answered.clear()

    async def sent(self) -> None:
        """The ``auth`` announced by :meth:`sending` went to Wings: wait for its answer."""
        if self._wings_gone or self._token is None:
            return
        try:
            await asyncio.wait_for(self._answered.wait(), AUTH_ANSWER_SECONDS)
        except TimeoutError:
            self._end()  # dropped: no answer will come

    def wings_closed(self) -> None:
        self._wings_gone = True
        self.session.claims = None
        self._answered.set()

    def heard(self, text: str) -> None:
        """A message from Wings to the client."""
        if len(text) > ANSWER_BYTES:
            return
        try:
            data = json.loads(text)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        event = data.get("event")
        args = data.get("args")
        first = args[0] if isinstance(args, list) and args and isinstance(args[0], str) else ""
        if event == "auth success":
            self._success()
        elif event in ("jwt error", "token expired", "daemon error", "throttled"):
            self._refused(event, first)

    def _success(self) -> None:
        session = self.session
        session.authenticated = True
        now = time.monotonic()
        self._unproven = [t for t in self._unproven if now - t < AUTH_ANSWER_SECONDS]
        token = self._token
        if token is not None and not self._certain and not self._unproven:
            try:
                self.in_force = InForce(claims=decode_token(token, session.key, []))
            except TokenRejected:
                self.in_force = _UNKNOWN  # signed with a key wingsbak does not hold
            try:
                session.claims = verify_socket_token(token, session.key, session.server)
            except TokenRejected:
                session.claims = None  # Wings holds a token wingsbak does not accept
            self._end()
            return
        session.claims = None  # whose success this is cannot be told
        self.in_force = _UNKNOWN
        if self._unproven:
            self._unproven.pop(0)  # one of those that might still answer did, or...
        if token is not None:
            self._end(unproven=True)  # ...the one in flight did, and the other still may

    def _refused(self, event: str, text: str) -> None:
        # "no jwt present" answers a message Wings handled before any auth: never about a
        # token in force (Wings never drops one it accepted).
        about_token = event == "token expired" or (event == "jwt error" and text != NO_JWT)
        if about_token:
            self.session.claims = None
            # Wings' TokenValid fails for good once it fails (expiry and the denylist only
            # grow): every later message gets this error, until an auth succeeds. With an
            # auth in flight the error could be its answer instead, unless Wings surely
            # refuses that token with it (the token in force stays then).
            sure = (event, text) in self._refusals and self._certain
            if self._token is None:
                self.in_force = InForce(refused=EXPIRED if event == "token expired" else text)
            elif not sure:
                self.in_force = _UNKNOWN
        if self._token is None:
            return
        if event == "throttled" and text == "auth":  # Pelican dropped the auth
            self._end()
        elif (event, text) in self._refusals or (event, None) in self._refusals:
            self._end(unproven=not self._certain)

    def held_answer(self, action: str) -> tuple[str, str] | None:
        """What Wings answers a ``set state`` with ``action`` that it refuses to run, as far
        as wingsbak can tell the token it holds (router/websocket/websocket.go HandleInbound:
        ``TokenValid``, then the action's permission, then the error in SendErrorJson's
        shape, its text only for ``admin.websocket.errors``); None: Wings says nothing."""
        if not self.session.authenticated:
            return "jwt error", NO_JWT
        if self.in_force.refused is not None:
            return "jwt error", self.in_force.refused
        claims = self.in_force.claims
        text = UNEXPECTED
        if claims is not None:
            exp = claims.get("exp")
            if not isinstance(exp, int) or int(time.time()) > exp:  # as decode_token
                return "jwt error", EXPIRED
            if claims.get("server_uuid") != self.session.server:
                return "jwt error", UUID_MISMATCH
            if not grants(claims, POWER_PERMISSIONS[action]):
                return None
            if grants(claims, "admin.websocket.errors"):
                text = HELD
        return "daemon error", f"Error Event [{uuid.uuid4()}]: {text}"

    def _end(self, unproven: bool = False) -> None:
        if unproven:
            self._unproven.append(time.monotonic())
        self._token = None
        self._answered.set()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/servers/{server}/ws", relay, name="wings-ws")
