"""``POST /api/update``: the panel's configuration push, sent when an admin saves the node's
settings (Pterodactyl: NodeUpdateService -> DaemonConfigurationRepository::update, every save;
Pelican: EditNode when a field that matters changed, and on a token reset). The body is
Wings' whole configuration as the panel builds it (Node::getConfiguration): ``api.host:
0.0.0.0``, ``api.port`` the node's public port, ``api.ssl`` with ``/etc/letsencrypt/live/``
paths, the node's ``token``/``token_id``, ``remote``, ``system.data``...

Passed through, Wings would write the public port into its file and take it at its next start
(router/router_system.go, postUpdateConfiguration), where wingsbak listens. So wingsbak answers
it: it applies its own part (wingsbak.wings.identity), forwards the rest to Wings with ``api``
pointing at Wings' own address (``api.upstream``), and passes Wings' ``{"applied": ...}`` back.

Go decodes the body into Wings' struct matching keys case-insensitively; a body in which two
keys of one object would match the same field is refused, so that what wingsbak reads is what
Wings reads.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from wingsbak.answers import error_response, node_user_agent
from wingsbak.appkeys import CONFIG
from wingsbak.config import COMPRESSION_LEVELS
from wingsbak.log import get_logger
from wingsbak.wings.client import CALL_TIMEOUT, WINGS
from wingsbak.wings.identity import IDENTITY, upstream_address
from wingsbak.wings.proxy import UNREACHABLE, forwarded_headers

log = get_logger(__name__)

# Wings' answer to a body it cannot decode (router/middleware CaptureErrors).
NOT_PARSABLE = "The data passed in the request was not in a parsable format. Please try again."


class PushRefused(Exception):
    """A push wingsbak will not apply (400); nothing of it is applied or forwarded."""


def _fold(name: str) -> str:
    # Go's encoding/json matches a key to a field name under simple case folding.
    return "".join("s" if c == "\u017f" else c.lower() if len(c.lower()) == 1 else c for c in name)


def _unambiguous(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _value in pairs:
        folded = _fold(key)
        if folded in seen:
            raise PushRefused(f"The key {key!r} appears twice in one object.")
        seen.add(folded)
    return dict(pairs)


def decode(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body, object_pairs_hook=_unambiguous)
    except (ValueError, RecursionError):
        raise PushRefused(NOT_PARSABLE) from None
    if not isinstance(doc, dict):
        raise PushRefused(NOT_PARSABLE)
    return doc


def _field(obj: dict[str, Any], *names: str) -> Any:
    """The value of the first of ``names`` the object has (Go's matching); None when absent
    or null (a null leaves Wings' field as it was)."""
    for name in names:
        for key, value in obj.items():
            if _fold(key) == name:
                return value
    return None


def _typed(key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PushRefused(f"{key}: expected {'a string' if kind is str else kind.__name__}.")
    return value


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PushRefused(f"{key}: expected an object.")
    return value


def read_push(doc: dict[str, Any]) -> dict[str, Any]:
    """What of the push is wingsbak's, by its configuration key, type-checked."""
    values: dict[str, Any] = {}
    for key in ("token", "token_id", "remote"):
        value = _typed(key, _field(doc, key), str)
        if value is not None:
            values[key] = value
    if values.get("token") == "":
        raise PushRefused("token: must not be empty.")
    remote = values.get("remote")
    if remote and not remote.startswith(("http://", "https://")):
        raise PushRefused("remote: not an http(s) URL.")
    api = _mapping("api", _field(doc, "api"))
    host = _typed("api.host", _field(api, "host"), str)
    if host is not None:
        values["api.host"] = host
    port = _typed("api.port", _field(api, "port"), int)
    if port is not None:
        if not 0 < port < 65536:
            raise PushRefused("api.port: not a TCP port.")
        values["api.port"] = port
    ssl = _mapping("api.ssl", _field(api, "ssl"))
    for name, kind in (("enabled", bool), ("cert", str), ("key", str)):
        value = _typed(f"api.ssl.{name}", _field(ssl, name), kind)
        if value is not None:
            values[f"api.ssl.{name}"] = value
    system = _mapping("system", _field(doc, "system"))
    backups = _mapping("system.backups", _field(system, "backups"))
    # Wings' Backups struct has no JSON tags: a push names them WriteLimit, CompressionLevel
    # (any case); their YAML names are taken too.
    limit = _typed("system.backups.write_limit", _field(backups, "writelimit", "write_limit"), int)
    if limit is not None:
        if limit < 0:
            raise PushRefused("system.backups.write_limit: must be 0 (unlimited) or positive.")
        values["system.backups.write_limit"] = limit
    level = _typed(
        "system.backups.compression_level",
        _field(backups, "compressionlevel", "compression_level"),
        str,
    )
    if level is not None:
        if level not in COMPRESSION_LEVELS:
            raise PushRefused(
                "system.backups.compression_level: not one of " + ", ".join(COMPRESSION_LEVELS)
            )
        values["system.backups.compression_level"] = level
    return values


def for_wings(doc: dict[str, Any], upstream: str) -> dict[str, Any]:
    """The push as Wings gets it: ``api.host``/``api.port`` are Wings' own address (from
    ``api.upstream``), TLS as the upstream uses it; the rest as the panel sent it (Wings keeps
    its certificate for ``/etc/letsencrypt/live/`` paths itself)."""
    host, port, tls = upstream_address(upstream)
    api = _mapping("api", _field(doc, "api"))
    ssl = _mapping("api.ssl", _field(api, "ssl"))
    out = {k: v for k, v in doc.items() if _fold(k) != "api"}
    out["api"] = {
        **{k: v for k, v in api.items() if _fold(k) not in ("host", "port", "ssl")},
        "host": host,
        "port": port,
        "ssl": {**{k: v for k, v in ssl.items() if _fold(k) != "enabled"}, "enabled": tls},
    }
    return out


async def post_update(request: web.Request) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    identity = request.app[IDENTITY]
    # The token id the request was made with: Pelican (DaemonRepository::
    # enforceValidNodeToken) checks the answer against the node's id before a token reset.
    headers = {"User-Agent": node_user_agent(cfg.token_id)}
    body = await request.read()
    async with identity.lock:
        if cfg.ignore_panel_config_updates or await identity.wings_ignores_updates():
            log.info("panel_config_update_ignored", reason="ignore_panel_config_updates")
            return web.json_response({"applied": False}, headers=headers)
        try:
            doc = decode(body)
            values = read_push(doc)
        except PushRefused as exc:
            log.info("panel_config_update_refused", error=str(exc))
            return error_response(400, str(exc), headers)
        token_before = cfg.token
        applied, kept = await identity.apply(values)
        log.info("panel_config_update_applied", keys=applied)
        if kept:
            log.warning("config_changes_need_restart", keys=kept)
        wings = request.app.get(WINGS)
        if wings is None:
            return web.json_response({"applied": True}, headers=headers)
        forwarded = for_wings(doc, cfg.upstream)
        status, answer, content_type = await _forward(request, identity, forwarded)
        if cfg.token != token_before and status == 200:
            # Pterodactyl Wings took the new token with the push; Pelican Wings did not.
            await identity.probe_wings()
    headers["Content-Type"] = content_type or "application/json"
    return web.Response(status=status, body=answer, headers=headers)


async def _forward(
    request: web.Request, identity: Any, doc: dict[str, Any]
) -> tuple[int, bytes, str | None]:
    wings = request.app[WINGS]
    headers = forwarded_headers(request)
    for name in ("Content-Length", "Content-Encoding", "Authorization"):
        headers.popall(name, None)
    headers["Content-Type"] = "application/json"
    data = json.dumps(doc).encode()
    for attempt in (1, 2):
        headers["Authorization"] = f"Bearer {identity.wings_token}"
        try:
            async with wings.session.post(
                wings.url("/api/update"), data=data, headers=headers, timeout=CALL_TIMEOUT
            ) as r:
                status, answer = r.status, await r.read()
                content_type = r.headers.get("Content-Type")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("wings_unreachable", method="POST", path="/api/update", error=repr(exc))
            return 502, json.dumps({"error": UNREACHABLE}).encode(), "application/json"
        if status != 403 or attempt == 2 or not await identity.wings_refused():
            break
    log.info("panel_config_update_forwarded", status=status)
    return status, answer, content_type


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/update", post_update, name="node-update")
