"""Panel-signed JWTs: HS256 with the node token, nothing else accepted.

Download links are one-time: the ``unique_id`` of a used token is remembered (on disk, so a
restart does not reopen it) until the token expires. A resumed download (a ``Range`` request
from the address that made the first request) may reuse it, so a broken download can finish.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from wingsbak.errors import TokenRejected
from wingsbak.statefile import write_json_atomic

ALGORITHMS = ["HS256"]
# A used download link is remembered this long past its expiry, for clocks that disagree a
# little about when it expired.
LEEWAY_SECONDS = 5
MAX_TOKEN_LENGTH = 8192
USED_TOKENS_NAME = ".wingsbak-used-tokens.json"
# Wings reads the time claims into Go's int64 (gbrlsnchs/jwt v3, ``Time.UnmarshalJSON``): a
# float, a string or a number past int64 makes the token unreadable there, so here too.
_INT64 = range(-(2**63), 2**63)
_TIME_CLAIMS = ("exp", "iat", "nbf")
# What pterodactyl/wings checks of a token (router/tokens/parser.go): the HS256 signature and
# ``exp``, nothing else. ``nbf`` (the panels backdate it by 5 minutes) and ``iat`` in the
# future (a panel whose clock runs ahead) are accepted, as Wings accepts them.
_DECODE_OPTIONS: dict[str, Any] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "require": [],
}
# The message Wings gives an expired token; the panel's console matches it to fetch a new one.
EXPIRED = "jwt: exp claim is invalid"


def decode_token(
    token: str, key: str, required: list[str], scope: str | None = None
) -> dict[str, Any]:
    """Verify a panel JWT and return its claims, or raise :class:`TokenRejected`.

    Accepts both panels' shapes: Pterodactyl's (``aud`` a list, ``jti``, ``user_id``) and
    Pelican's (``scope``); with ``scope`` given, see :func:`has_scope`."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected("the token is missing or malformed")
    if not key:
        raise TokenRejected("this node has no token to verify signatures with")
    try:
        claims = jwt.decode(token, key, algorithms=ALGORITHMS, options=_DECODE_OPTIONS)
    except jwt.InvalidTokenError as exc:
        raise TokenRejected("the token is invalid") from exc
    for name in _TIME_CLAIMS:
        value = claims.get(name)
        if value is not None and (type(value) is not int or value not in _INT64):
            raise TokenRejected(f"the token's '{name}' claim is not a whole number of seconds")
    exp = claims.get("exp")
    # Wings: expired once the current second is past ``exp`` (no leeway).
    if exp is None or int(time.time()) > exp:
        raise TokenRejected(EXPIRED)
    _check_registered(claims)
    for name in required:
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise TokenRejected(f"the token's '{name}' claim is not a string")
    if scope is not None and not has_scope(claims, scope):
        raise TokenRejected(f"the token is not for '{scope}'")
    return claims


def has_scope(claims: dict[str, Any], scope: str) -> bool:
    """Pelican's tokens name their scope (``"scope": "backup-download"``) and Pelican Wings
    requires the right one; Pterodactyl's tokens have none and pass."""
    scopes = claims.get("scope")
    if scopes is None:
        return True
    return isinstance(scopes, str) and scope in scopes.split(" ")


def _check_registered(claims: dict[str, Any]) -> None:
    """The registered claims have the types Wings' decoder needs (``aud`` a string or a list
    of strings, ``iss``/``sub``/``jti`` strings), or the token is refused, as Wings does."""
    aud = claims.get("aud")
    if aud is not None and not (
        isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))
    ):
        raise TokenRejected("the token's 'aud' claim is malformed")
    for name in ("iss", "sub", "jti"):
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise TokenRejected(f"the token's '{name}' claim is not a string")


@dataclass(slots=True)
class _Use:
    expires: float
    address: str
    completed: bool = False


def _may_resume(use: _Use, address: str, resume_from: int) -> bool:
    return resume_from > 0 and not use.completed and use.address == address


class UsedTokens:
    """``unique_id`` values already used, until their token expires; persisted to a file."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.path = Path(directory) / USED_TOKENS_NAME if directory is not None else None
        self._uses: dict[str, _Use] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        now = time.time()
        if isinstance(data, dict):
            for uid, item in data.items():
                try:
                    use = _Use(
                        float(item["expires"]), str(item["address"]), bool(item.get("completed"))
                    )
                except (KeyError, TypeError, ValueError):
                    continue
                if use.expires > now:
                    self._uses[uid] = use

    def claim(self, unique_id: str, expires: float, address: str, resume_from: int) -> bool:
        """Mark ``unique_id`` used; False when it was used before. The one exception is a
        resume: a ``Range`` from a byte past 0, from the address of the first request, while
        no transfer of the whole (or of its end) has completed. Runs in a worker thread (it
        writes the file). A used id is remembered until the token can no longer be valid."""
        now = time.time()
        with self._lock:
            for uid in [u for u, use in self._uses.items() if use.expires <= now]:
                del self._uses[uid]
            use = self._uses.get(unique_id)
            if use is not None:
                return _may_resume(use, address, resume_from)
            self._uses[unique_id] = _Use(expires + LEEWAY_SECONDS, address)
            self._save()
            return True

    def accepts(self, unique_id: str, address: str, resume_from: int) -> bool:
        """Whether :meth:`claim` would succeed, without using the token: for an answer that
        does not send the archive (HEAD, 304, 412, 416)."""
        with self._lock:
            use = self._uses.get(unique_id)
            if use is None or use.expires <= time.time():
                return True
            return _may_resume(use, address, resume_from)

    def complete(self, unique_id: str) -> None:
        """The archive (or its last byte range) has been sent: no resume any more."""
        with self._lock:
            use = self._uses.get(unique_id)
            if use is not None and not use.completed:
                use.completed = True
                self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            u: {"expires": x.expires, "address": x.address, "completed": x.completed}
            for u, x in self._uses.items()
        }
        write_json_atomic(self.path, data)
