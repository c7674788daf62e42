"""wingsbak.wings.gojson against the Wings stand-in's own reading of Go's JSON (two implementations,
written apart): the same message, or the same failure, for the issue's cases and for generated
ones; and what wingsbak passes on (``encode``) reads back alike under every decoder."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.wings_standin import (
    MESSAGE_FIELDS,
    POWER_FIELDS,
    GoDecodeError,
    ascii_fold,
    equal_fold,
    go_parse,
    go_struct,
)
from wingsbak.wings import gojson

CASES = [
    b'{"event":"set state","args":["start"]}',
    b'{"EVENT":"set state","ARGS":["start"]}',
    b'{"event":"set state","args":["start",null]}',
    b'{"event":"send stats","Event":"set state","args":["restart"]}',
    b'{"event":"set state","args":["start"],"args":[null,null]}',
    '{"event":"set state","arg\u017f":["start"],"\u212aey":1}'.encode(),
    b'{"event":"set state","arg\\u017f":["start"]}',
    b'{"x":' + b"[" * 9999 + b"]" * 9999 + b',"event":"a"}',
    b'{"x":' + b"[" * 10000 + b"]" * 10000 + b',"event":"a"}',
    b'{"event":"st\xffart\xe2\x82","args":["\xed\xa0\x80"]}',
    b'{"event":"a\\ud800\\u0041\\ud83d\\ude00\\udc00"}',
    b'{"event":"set state","args":"start"}',
    b'{"event":"set state","args":[1]}',
    b'{"event":1}',
    b'{"event":"x","y":{"a":[1,2,{"b":null}],"c":-0.5e+3,"d":true}}',
    b'{"event":"x","y":01}',
    b'{"event":"x","y":NaN}',
    b'{"event":"x",}',
    b'{"event":"x"',
    b'{"event":"\t"}',
    b'{"event":"x"} ',
    b'{"event":"x"} {}',
    b"null",
    b" [1] ",
    b"",
]
POWER_CASES = [
    b'{"Action":"start"}',
    b'{"action":"stop","ACTION":"start"}',
    b'{"action":"start","x":"\xff"}',
    b'{"action":"start"} junk',
    b'{"action":"stop"}{"action":"start"}',
    b'{"action":"restart","action":null,"wait_seconds":7}',
    b'{"action":"start","wait_seconds":1.5}',
    b'{"action":"start","wait_seconds":99999999999999999999}',
    b'{"action":"start","Wait_Seconds":-0}',
    b"null x",
    b"nullx",
    b"",
    b"  ",
    b'"start"',
]


def standin(data: bytes, first_value_only: bool = False, fields=MESSAGE_FIELDS, fold=equal_fold):
    try:
        return go_struct(go_parse(data, first_value_only), fields, fold)
    except GoDecodeError:
        return None


def ours(data: bytes):
    try:
        m = gojson.socket_message(data)
    except gojson.GoJSONError:
        return None
    return {"event": m.event, "args": m.args}


def ours_power(data: bytes):
    try:
        p = gojson.power_request(data)
    except gojson.GoJSONError:
        return None
    return {"action": p.action, "wait_seconds": p.wait_seconds}


def same_text(value):
    # The stand-in replaces a run of bytes that are not UTF-8 with one U+FFFD, Go (and
    # wingsbak) one per byte: the count is no matter of what Wings does.
    if isinstance(value, str):
        return re.sub("\ufffd+", "\ufffd", value)
    if isinstance(value, list):
        return [same_text(v) for v in value]
    if isinstance(value, dict):
        return {k: same_text(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_socket_messages_read_alike(data):
    assert same_text(ours(data)) == same_text(standin(data))


@pytest.mark.parametrize("data", POWER_CASES, ids=range(len(POWER_CASES)))
def test_power_bodies_read_alike(data):
    expected = standin(data, first_value_only=True, fields=POWER_FIELDS)
    assert same_text(ours_power(data)) == same_text(expected)


def test_what_is_passed_on_reads_the_same_everywhere():
    for data in CASES:
        try:
            message = gojson.socket_message(data)
        except gojson.GoJSONError:
            continue
        wire = message.encode()
        want = {"event": message.event, "args": message.args or []}
        assert json.loads(wire) == want  # Python
        for fold in (equal_fold, ascii_fold):  # encoding/json, goccy
            assert standin(wire, fold=fold) == want
        assert gojson.socket_message(wire) == gojson.SocketMessage(message.event, want["args"])


KEYS = st.sampled_from(
    ["event", "Event", "EVENT", "args", "ARGS", "Args", "arg\u017f", "ev", "x", "", "argss"]
)
STRINGS = st.one_of(
    st.sampled_from(["set state", "start", "auth", "", "\u00e9", "\\u017f"]),
    st.text(max_size=4),
)


def encoded(s: str) -> bytes:
    # Raw UTF-8 (U+017F as two bytes) half the time, escapes the other half.
    return json.dumps(s, ensure_ascii=len(s) % 2 == 0).encode()


@st.composite
def values(draw, depth: int = 0) -> bytes:
    kind = draw(st.sampled_from(["str"] * 4 + ["null", "arr", "arr", "arr", "obj", "num", "lit"]))
    if draw(st.integers(0, 19)) == 0:
        kind = "bad"
    if depth > 3 and kind in ("arr", "obj"):
        kind = "str"
    if kind == "str":
        return encoded(draw(STRINGS))
    if kind == "null":
        return b"null"
    if kind == "num":
        return draw(st.sampled_from([b"0", b"-1", b"1.5", b"2e3", b"01", b"-"]))
    if kind == "lit":
        return draw(st.sampled_from([b"true", b"false", b"nul", b"NaN"]))
    if kind == "bad":
        return draw(st.sampled_from([b'"\xff\xfe"', b'"a\\q"', b'"\\ud800"', b"", b"]"]))
    items = draw(st.lists(values(depth + 1), max_size=3))
    if kind == "arr":
        return b"[" + b",".join(items) + b"]"
    keys = draw(st.lists(KEYS, min_size=len(items), max_size=len(items)))
    return b"{" + b",".join(encoded(k) + b":" + v for k, v in zip(keys, items, strict=True)) + b"}"


STRING_VALUES = st.one_of(STRINGS.map(encoded), st.just(b"null"))
STRING_LISTS = st.lists(STRING_VALUES, max_size=3).map(lambda v: b"[" + b",".join(v) + b"]")
MEMBERS = st.one_of(
    st.tuples(st.sampled_from(["event", "Event", "EVENT", "action", "Action"]), STRING_VALUES),
    st.tuples(st.sampled_from(["args", "ARGS", "arg\u017f", "\u212aey"]), STRING_LISTS),
    st.tuples(st.sampled_from(["wait_seconds", "WAIT_seconds"]), st.sampled_from([b"3", b"-0"])),
    st.tuples(KEYS, values()),
)


@st.composite
def messages(draw) -> bytes:
    members = draw(st.lists(MEMBERS, max_size=5))
    body = b",".join(encoded(k) + b":" + v for k, v in members)
    return draw(st.sampled_from([b"", b" "])) + b"{" + body + b"}" + draw(
        st.sampled_from([b"", b"", b"", b" ", b"x", b"{}"])
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(messages())
def test_generated_messages_read_alike(data):
    assert same_text(ours(data)) == same_text(standin(data))
    expected = standin(data, first_value_only=True, fields=POWER_FIELDS)
    assert same_text(ours_power(data)) == same_text(expected)
