"""The relay's reading of Wings' answers to ``auth`` (wingsbak.wings.relay.WingsAuth), fed the
answers in the orders Wings' goroutines can give them: a success adopts a token only when it
can be nobody else's."""

from __future__ import annotations

import asyncio
import json

import pytest

import wingsbak.wings.relay
from tests.support.daemon_helpers import NODE_TOKEN, new_uuid, sign, ws_claims
from wingsbak.event_socket import EventSession
from wingsbak.wings.relay import WingsAuth

SERVER = new_uuid()
DENYLISTED = "jwt: created too far in past (denylist)"
EXPIRED = "jwt: exp claim is invalid"


def token(**over) -> str:
    return sign({**ws_claims(SERVER, **over), "scope": "websocket"})


def answer(event: str, *args: str) -> str:
    return json.dumps({"event": event, "args": list(args)} if args else {"event": event})


@pytest.fixture
def auth() -> WingsAuth:
    return WingsAuth(EventSession(None, SERVER, NODE_TOKEN))  # type: ignore[arg-type]


async def in_flight(auth: WingsAuth, t: str) -> asyncio.Task[None]:
    auth.sending(t)
    task = asyncio.create_task(auth.sent())
    await asyncio.sleep(0)
    assert not task.done()
    return task


async def test_a_success_adopts_the_token_in_flight(auth):
    task = await in_flight(auth, token())
    auth.heard(answer("auth success"))
    await task
    assert auth.session.claims is not None and auth.session.authenticated


async def test_wings_refusing_its_own_events_under_an_expired_token_is_no_answer(auth):
    task = await in_flight(auth, token())
    auth.heard(answer("jwt error", EXPIRED))  # Wings' stats under the old token, not an answer
    assert not task.done()
    auth.heard(answer("auth success"))
    await task
    assert auth.session.claims is not None


async def test_a_denylist_error_that_may_be_a_stray_leaves_the_next_success_to_nobody(
    auth, monkeypatch
):
    first = await in_flight(auth, token())
    auth.heard(answer("jwt error", DENYLISTED))  # the first's refusal, or a stray
    await first
    second = await in_flight(auth, token())
    auth.heard(answer("auth success"))  # the first's, or the second's: cannot be told
    await second
    assert auth.session.claims is None and auth.session.authenticated
    third = await in_flight(auth, token())
    auth.heard(answer("auth success"))  # the one that might still answer did, or this one
    await third
    assert auth.session.claims is None
    # Once no earlier answer can still come (Wings answers at once), a success is the one's in
    # flight.
    monkeypatch.setattr(wingsbak.wings.relay, "AUTH_ANSWER_SECONDS", 0.05)
    await asyncio.sleep(0.1)
    fourth = await in_flight(auth, token())
    auth.heard(answer("auth success"))
    await fourth
    assert auth.session.claims is not None


async def test_a_refusal_wings_is_sure_to_give_ends_the_auth_and_the_events(auth):
    adopted = await in_flight(auth, token())
    auth.heard(answer("auth success"))
    await adopted
    expired = await in_flight(auth, token(exp=1))
    auth.heard(answer("jwt error", EXPIRED))
    await expired
    assert auth.session.claims is None
    forged = await in_flight(auth, sign(ws_claims(SERVER), key="not-the-node-token"))
    auth.heard(answer("daemon error", "Error Event [x]: an unexpected error"))
    await forged
    fresh = await in_flight(auth, token())
    auth.heard(answer("auth success"))  # surely this one's: the others could not succeed
    await fresh
    assert auth.session.claims is not None


async def test_an_auth_wings_drops_ends_after_a_while_and_claims_nothing(auth, monkeypatch):
    monkeypatch.setattr(wingsbak.wings.relay, "AUTH_ANSWER_SECONDS", 0.05)
    auth.sending(token())
    await asyncio.wait_for(auth.sent(), 10)
    assert auth.session.claims is None
    task = await in_flight(auth, token(permissions=["websocket.connect"]))
    auth.heard(answer("auth success"))
    await task
    assert auth.session.claims is not None
    assert auth.session.claims["permissions"] == ["websocket.connect"]


async def test_a_success_for_another_server_or_with_nothing_in_flight_grants_nothing(auth):
    task = await in_flight(auth, sign({**ws_claims(new_uuid()), "scope": "websocket"}))
    auth.heard(answer("auth success"))
    await task
    assert auth.session.claims is None and auth.session.authenticated
    auth.heard(answer("auth success"))  # an auth wingsbak could not read, Wings could
    assert auth.session.claims is None


async def test_an_answer_that_comes_before_the_sender_waits_is_its_answer(auth):
    """Wings may answer before the relay's sender runs again: the auth is in flight from
    before it is sent, so the answer is found and the sender does not wait for it."""
    t = token()
    auth.sending(t)
    auth.heard(answer("auth success"))
    await asyncio.wait_for(auth.sent(), 1)
    assert auth.session.claims is not None
