"""JSON read the way Wings' Go code reads it, so that what wingsbak judges is what Wings acts on.

Wings decodes a console socket message into ``struct {Event string; Args []string}``
(router/websocket/message.go) and a power request into ``struct {Action string; WaitSeconds
int}`` (router/router_server.go ``postServerPower``), with Go's ``encoding/json`` (Pelican's
socket, and gin's ``BindJSON`` in both) or goccy/go-json v0.10 (Pterodactyl's socket). Their
reading differs from Python's ``json``:

- a key names a field when the two are equal under Unicode simple case folding
  (``bytes.EqualFold``: ``ARGS``, ``Args`` and ``arg\u017f`` are all ``args``); every such key
  assigns in turn, so the last one wins;
- ``null`` leaves a string as it was: ``["start", null]`` reads ``["start", ""]``, and a list
  read a second time keeps the earlier element where the later list has ``null``;
- bytes that are not UTF-8 inside a string each become U+FFFD, not an error;
- nesting up to 10,000 levels is read (Python's parser gives up near 1,000);
- a value of the wrong type for a field, like any syntax error, makes the decode fail: Wings
  then drops the socket message (``router_server_ws.go``) or answers 400 (``BindJSON``);
  unknown fields are skipped;
- a socket message is the whole frame (``json.Unmarshal``); a request body is its first JSON
  value, and what follows it is never read (``json.Decoder.Decode`` in gin's ``BindJSON``).

goccy/go-json matches keys by ASCII case only, and encoding/json may hand a list read twice
elements from its spare capacity where goccy starts them empty; every key either matches, this
module matches too, and a list element past the earlier length starts empty here. Those
differences cannot reach Wings: whatever wingsbak judges it passes on as :meth:`encode` writes
it, which every Go decoder reads alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

# encoding/json's scanner (maxNestingDepth) and goccy's decoder both stop past this depth.
MAX_DEPTH = 10_000
# Runes outside ASCII that fold to an ASCII letter under Go's simple folding (the orbits of
# k and s in unicode.caseOrbit); every other non-ASCII rune matches no ASCII field name.
_FOLD_TO_ASCII = str.maketrans({"\u017f": "s", "\u212a": "k"})

_WHITESPACE = re.compile(rb"[ \t\n\r]*+")
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"')
_NUMBER = re.compile(rb"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+")
_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_LITERALS = (b"true", b"false", b"null")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = range(-(2**63), 2**63)


class GoJSONError(ValueError):
    """Go's decoder fails on this input: Wings drops the message (or answers 400)."""


class Kind(Enum):
    STRING = "string"
    STRINGS = "[]string"
    INT = "int"


_ZERO: dict[Kind, Any] = {Kind.STRING: "", Kind.STRINGS: None, Kind.INT: 0}


@dataclass(frozen=True, slots=True)
class SocketMessage:
    """A console socket message as Wings reads it (``websocket.Message``)."""

    event: str
    args: list[str] | None

    @property
    def joined(self) -> str:
        """``strings.Join(m.Args, "")``: the one value Wings takes from the args."""
        return "".join(self.args or ())

    def encode(self) -> bytes:
        return _canonical({"event": self.event, "args": self.args or []})


@dataclass(frozen=True, slots=True)
class PowerRequest:
    """A ``POST /api/servers/{server}/power`` body as Wings reads it."""

    action: str
    wait_seconds: int

    def encode(self) -> bytes:
        return _canonical({"action": self.action, "wait_seconds": self.wait_seconds})


def socket_message(data: bytes) -> SocketMessage:
    """A frame read as ``json.Unmarshal(p, &websocket.Message{})``, or :class:`GoJSONError`."""
    fields = decode_struct(data, {"event": Kind.STRING, "args": Kind.STRINGS})
    return SocketMessage(fields["event"], fields["args"])


def power_request(data: bytes) -> PowerRequest:
    """A body read as gin's ``c.BindJSON(&data)`` does, or :class:`GoJSONError`."""
    fields = decode_struct(
        data, {"action": Kind.STRING, "wait_seconds": Kind.INT}, first_value_only=True
    )
    return PowerRequest(fields["action"], fields["wait_seconds"])


def decode_struct(
    data: bytes, fields: dict[str, Kind], *, first_value_only: bool = False
) -> dict[str, Any]:
    """The values Go leaves in a struct with these (JSON-named, lower-case) fields after
    decoding ``data``; fields no key named keep their zero value."""
    return _Decoder(data, fields).decode(first_value_only)


def _canonical(value: dict[str, Any]) -> bytes:
    # ASCII only: escapes are read alike by every decoder, raw UTF-8 need not be.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def field_name(key: str, fields: dict[str, Kind]) -> str | None:
    """The field ``key`` assigns: an exact match first, then one equal under folding."""
    if key in fields:
        return key
    folded = key.translate(_FOLD_TO_ASCII)
    if not folded.isascii():
        return None
    folded = folded.lower()
    return next((name for name in fields if name.lower() == folded), None)


def _string(token: bytes) -> str:
    """A string token's value as Go's ``unquote`` gives it."""
    # Each byte that is not UTF-8 stays apart as a lone surrogate until the replacement below.
    text = token[1:-1].decode("utf-8", "surrogateescape")
    if "\\" in text:
        text = json.loads('"' + text + '"')  # the escapes as JSON defines them, pairs joined
    # Go: each invalid byte, and each escaped surrogate that is not half of a pair, is U+FFFD.
    return _SURROGATE.sub("\ufffd", text)


class _Decoder:
    """One pass over ``data`` without recursion: values of the known fields are read, every
    other value is only checked for syntax (and depth)."""

    def __init__(self, data: bytes, fields: dict[str, Kind]) -> None:
        self.data = data
        self.fields = fields

    def fail(self, pos: int, what: str) -> GoJSONError:
        return GoJSONError(f"{what} at offset {pos}")

    def ws(self, pos: int) -> int:
        match = _WHITESPACE.match(self.data, pos)
        assert match is not None  # the pattern matches the empty string
        return match.end()

    def peek(self, pos: int) -> int:
        if pos >= len(self.data):
            raise self.fail(pos, "unexpected end of JSON input")
        return self.data[pos]

    def decode(self, first_value_only: bool) -> dict[str, Any]:
        values = {name: _ZERO[kind] for name, kind in self.fields.items()}
        pos = self.ws(0)
        first = self.peek(pos)
        if first == ord("{"):
            pos = self.struct(pos, values)
        elif self.data.startswith(b"null", pos):
            pos += 4  # null into a struct: nothing changes, and no error
            if first_value_only and pos < len(self.data) and self.data[pos] not in b" \t\n\r":
                raise self.fail(pos, "invalid character after top-level value")
        else:
            # Any other value into a struct is a type error (Go checks the syntax of the
            # rest too, but the decode fails either way).
            raise self.fail(pos, "a struct cannot hold this value")
        if not first_value_only and self.ws(pos) != len(self.data):
            raise self.fail(pos, "invalid character after top-level value")
        return values

    def struct(self, pos: int, values: dict[str, Any]) -> int:
        pos = self.ws(pos + 1)
        if self.peek(pos) == ord("}"):
            return pos + 1
        while True:
            key, pos = self.key(pos)
            name = field_name(key, self.fields)
            if name is None:
                pos = self.skip(pos, depth=1)
            else:
                pos = self.field(pos, self.fields[name], values, name)
            pos = self.ws(pos)
            c = self.peek(pos)
            if c == ord("}"):
                return pos + 1
            if c != ord(","):
                raise self.fail(pos, "expected , or } after an object member")
            pos = self.ws(pos + 1)

    def key(self, pos: int) -> tuple[str, int]:
        """A member's key and the position after its colon."""
        match = _STRING.match(self.data, pos)
        if match is None:
            raise self.fail(pos, "expected a string key")
        pos = self.ws(match.end())
        if self.peek(pos) != ord(":"):
            raise self.fail(pos, "expected : after an object key")
        return _string(match.group()), self.ws(pos + 1)

    def field(self, pos: int, kind: Kind, values: dict[str, Any], name: str) -> int:
        if self.data.startswith(b"null", pos):
            if kind is Kind.STRINGS:
                values[name] = None  # a nil slice; a string or an int keeps its value
            return pos + 4
        if kind is Kind.STRING:
            match = _STRING.match(self.data, pos)
            if match is None:
                raise self.fail(pos, "a string field cannot hold this value")
            values[name] = _string(match.group())
            return match.end()
        if kind is Kind.INT:
            match = _NUMBER.match(self.data, pos)
            if match is None or not _INTEGER.fullmatch(match.group()):
                raise self.fail(pos, "an int field cannot hold this value")
            number = int(match.group())
            if number not in _INT64:
                raise self.fail(pos, "the number overflows an int")
            values[name] = number
            return match.end()
        return self.strings(pos, values, name)

    def strings(self, pos: int, values: dict[str, Any], name: str) -> int:
        if self.peek(pos) != ord("["):
            raise self.fail(pos, "a list field cannot hold this value")
        earlier: list[str] = values[name] or []
        items: list[str] = []
        pos = self.ws(pos + 1)
        if self.peek(pos) == ord("]"):
            values[name] = items
            return pos + 1
        while True:
            if self.data.startswith(b"null", pos):
                # Go decodes into the element the slice already had there; null leaves it.
                items.append(earlier[len(items)] if len(items) < len(earlier) else "")
                pos += 4
            else:
                match = _STRING.match(self.data, pos)
                if match is None:
                    raise self.fail(pos, "a list of strings cannot hold this value")
                items.append(_string(match.group()))
                pos = match.end()
            pos = self.ws(pos)
            c = self.peek(pos)
            if c == ord("]"):
                values[name] = items
                return pos + 1
            if c != ord(","):
                raise self.fail(pos, "expected , or ] after an array element")
            pos = self.ws(pos + 1)

    def scalar(self, pos: int) -> int:
        c = self.peek(pos)
        pattern = _STRING if c == ord('"') else _NUMBER
        match = pattern.match(self.data, pos)
        if match is not None:
            return match.end()
        for literal in _LITERALS:
            if self.data.startswith(literal, pos):
                return pos + len(literal)
        raise self.fail(pos, "invalid character looking for the beginning of a value")

    def skip(self, pos: int, depth: int) -> int:
        """Past one value that no field takes, checking its syntax; ``depth``: the containers
        around it."""
        closers = bytearray()
        while True:
            pos = self.ws(pos)
            c = self.peek(pos)
            if c in b"{[":
                if depth + len(closers) + 1 > MAX_DEPTH:
                    raise self.fail(pos, "exceeded max depth")
                close = ord("}") if c == ord("{") else ord("]")
                pos = self.ws(pos + 1)
                if self.peek(pos) != close:
                    closers.append(close)
                    if close == ord("}"):
                        pos = self.key(pos)[1]
                    continue
                pos += 1
            else:
                pos = self.scalar(pos)
            # A value ended: close what it ends, or go on to the next element or member.
            while True:
                if not closers:
                    return pos
                pos = self.ws(pos)
                c = self.peek(pos)
                if c == closers[-1]:
                    closers.pop()
                    pos += 1
                    continue
                if c != ord(","):
                    raise self.fail(pos, "expected , or a closing bracket")
                pos = self.ws(pos + 1)
                if closers[-1] == ord("}"):
                    pos = self.key(pos)[1]
                break
