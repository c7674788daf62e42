"""The node's live identity: its token (and the token's id), the panel's address, its public
address and certificate, and the token Wings holds. All of them change while the node runs,
and none of them may need a restart:

- the panel's configuration push (``POST /api/update``, wingsbak.wings.config_push) brings a new
  token, a new port or TLS setting;
- ``wings configure``, an operator or Wings itself (at every start) rewrites Wings' file: it is
  watched (its mtime, every ``api.watch_interval`` seconds) as well as re-read on SIGHUP;
- a certificate renewal replaces the certificate files (certbot swaps the symlinks in
  ``live/``): new TLS handshakes take the new certificate, open connections keep theirs.

Pterodactyl Wings takes a pushed token at once; Pelican Wings (and either Wings after an edit of
its file) keeps the one it started with until it restarts. wingsbak takes the new token at once
for everything it checks and signs, and uses the one Wings still holds towards Wings (its own
calls, and the credentials of requests passed through) until Wings accepts the new one.

What a push set is kept across restarts in wingsbak's own state file (``$STATE_DIRECTORY``,
systemd's ``StateDirectory=wingsbak``; else the backup directory), never in Wings' file. Each
entry holds the value the files had when the push replaced it: once a file says something else
(an edit after the push), the file wins and the entry is dropped. The last writer wins, as in
Wings, whose push and file are one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import hashlib
import hmac
import json
import os
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import jwt
import yaml
from aiohttp import web
from multidict import CIMultiDict

from wingsbak.addresses import WILDCARD_HOSTS
from wingsbak.config import Config, ConfigError, apply_reload
from wingsbak.log import get_logger
from wingsbak.storage.select import load_config

if TYPE_CHECKING:
    from wingsbak.panel import PanelClient
    from wingsbak.wings.client import WingsClient

log = get_logger(__name__)

STATE_NAME = "node-state.json"  # in $STATE_DIRECTORY
FALLBACK_STATE_NAME = ".wingsbak-node-state.json"  # in the backup directory
# Wings keeps its current certificate when a push names a key under this directory
# (router/router_system.go, postUpdateConfiguration): the panel always sends these paths.
LETSENCRYPT_LIVE = "/etc/letsencrypt/live/"
IDENTITY_KEYS = ("token", "token_id", "remote")
LISTENER_KEYS = ("api.host", "api.port")
TLS_KEYS = ("api.ssl.enabled", "api.ssl.cert", "api.ssl.key")
# Applied to the running daemon, from a push, an edit of a file or a SIGHUP.
LIVE_KEYS = (*IDENTITY_KEYS, *LISTENER_KEYS, *TLS_KEYS)
# Wings' backup settings that wingsbak shares: a push may carry them too.
SHARED_BACKUP_KEYS = ("system.backups.write_limit", "system.backups.compression_level")
PERSISTED_KEYS = (*LIVE_KEYS, *SHARED_BACKUP_KEYS)
# How long a changed file must stay the same before it is read: Wings rewrites its file in
# place (os.WriteFile truncates, then writes), so a reader can catch it half-written.
SETTLE_SECONDS = 0.5
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
# What Wings gets in place of a credential that is no longer the node's.
REVOKED = "wingsbak-revoked-credential"
# Wings' bearer check (router/middleware/middleware.go): "Bearer" exactly, one space.
BEARER = "Bearer"
_JWT_OPTIONS: dict[str, Any] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "require": [],
}


def get_key(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_key(cfg: Any, key: str, value: Any) -> None:
    *parents, name = key.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, name, value)


def _values(cfg: Config) -> dict[str, Any]:
    return {key: get_key(cfg, key) for key in PERSISTED_KEYS}


def state_path(cfg: Config) -> Path:
    """``$STATE_DIRECTORY`` (systemd's ``StateDirectory=wingsbak``: /var/lib/wingsbak), else
    the backup directory, which the daemon may write in any case."""
    first = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if first:
        return Path(first) / STATE_NAME
    return cfg.backup_dir / FALLBACK_STATE_NAME


def _write_private(path: Path, data: Any) -> None:
    """Atomic and owner-only: the state holds tokens."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(slots=True)
class SavedState:
    """What pushes set, by key: ``{"value": pushed, "over": the files' value it replaced}``,
    and the token Wings holds while it is not the node's (empty: the node's)."""

    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    wings_token: str = ""

    @classmethod
    def read(cls, path: Path) -> SavedState:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.error("node_state_unreadable", path=str(path), error=str(exc))
            return cls()
        state = cls()
        overrides = raw.get("overrides") if isinstance(raw, dict) else None
        for key, entry in (overrides or {}).items():
            if key in PERSISTED_KEYS and isinstance(entry, dict) and {"value", "over"} <= {*entry}:
                state.overrides[key] = {"value": entry["value"], "over": entry["over"]}
        token = raw.get("wings_token") if isinstance(raw, dict) else None
        state.wings_token = token if isinstance(token, str) else ""
        return state

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "overrides": self.overrides, "wings_token": self.wings_token}


def overlay(cfg: Config, state: SavedState) -> bool:
    """Lay the pushed values over ``cfg`` (as read from the files). An entry whose file value
    changed since the push (the file was edited after it), or now equals it, is dropped.
    Returns whether ``state`` changed."""
    changed = False
    for key, entry in list(state.overrides.items()):
        current = get_key(cfg, key)
        if current == entry["value"] or current != entry["over"]:
            if current != entry["value"]:
                log.info("pushed_setting_superseded", key=key)
            del state.overrides[key]
            changed = True
            continue
        if type(entry["value"]) is not type(current):
            del state.overrides[key]
            changed = True
            continue
        set_key(cfg, key, entry["value"])
    return changed


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with ``cert`` and ``key`` (a mismatched pair, as in the middle of a
    renewal, raises ``ssl.SSLError``)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _signature(path: str | Path) -> tuple[int, ...] | None:
    """What tells a changed file: its inode (a symlink swap or a rename) and size and mtime
    (an in-place write). Follows symlinks (certbot's live/ links)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_with_signature(path: Path) -> tuple[tuple[int, ...] | None, bytes] | None:
    """Signature and bytes of a regular file (a FIFO or a device is never read here: the
    configuration loader reads it, once)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        before = _signature(path)
        data = path.read_bytes()
    except OSError:
        return None
    return before, data


def _read_yaml_mapping(path: Path) -> dict[str, Any] | None:
    read = _read_with_signature(path)
    try:
        raw = yaml.safe_load(read[1].decode("utf-8")) if read else None
    except (UnicodeDecodeError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) else None


def _listens(raw: dict[str, Any]) -> tuple[str, int] | None:
    api = raw.get("api")
    if not isinstance(api, dict):
        return None
    host, port = api.get("host", "0.0.0.0"), api.get("port", 8080)
    if not isinstance(port, int) or isinstance(port, bool):
        return None
    return (str(host) if host is not None else "", port)


def _overlaps(a: str, b: str) -> bool:
    bare = (a.strip("[]"), b.strip("[]"))
    return bare[0] in WILDCARD_HOSTS or bare[1] in WILDCARD_HOSTS or bare[0] == bare[1]


def upstream_address(upstream: str) -> tuple[str, int, bool]:
    """Host (as Wings' ``api.host`` takes it: Go joins host and port with a colon, so an IPv6
    literal keeps its brackets), port and TLS of ``api.upstream``."""
    parts = urlsplit(upstream)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return host, parts.port or (443 if tls else 80), tls


@runtime_checkable
class Site(Protocol):
    """A site the daemon listens on (wingsbak.http.server.GuardedSite): its certificate can
    change while it listens."""

    @property
    def name(self) -> str: ...

    def use_ssl_context(self, ssl_context: ssl.SSLContext | None) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# A new site of the daemon's on host:port with this certificate (not listening yet).
NewSite = Callable[[str, int, ssl.SSLContext | None], Site]


class NodeIdentity:
    """Holds and changes, live, what identifies the node and where it listens (see the module
    docstring). ``cfg`` is the daemon's one configuration object: every reader of the token,
    the token id and the panel's address reads it there, so a change is seen at once."""

    def __init__(
        self, cfg: Config, *, config_path: str | None = None, state_file: Path | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.state_file = state_file or state_path(cfg)
        self._file_values = _values(cfg)
        self.state = SavedState.read(self.state_file)
        if overlay(cfg, self.state):
            self._save_now()
        # The token Wings holds: the node's, unless a change of it is still pending there.
        self.wings_token = self.state.wings_token or cfg.token
        ssl_cfg = cfg.api.ssl
        self.tls_context = tls_context(ssl_cfg.cert, ssl_cfg.key) if ssl_cfg.enabled else None
        self.panel: PanelClient | None = None
        self.wings: WingsClient | None = None
        self.lock = asyncio.Lock()  # one change at a time: a push, a reload
        self._save_lock = asyncio.Lock()
        self._runner: web.BaseRunner | None = None
        self._new_site: NewSite | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._probing: asyncio.Task[bool] | None = None
        self._marks: dict[str, Any] = {}
        self._watched_digest = ""
        self._tls_refused: Any = None

    # -- wiring ------------------------------------------------------------------------------

    def attach(self, *, panel: PanelClient, wings: WingsClient | None) -> None:
        self.panel = panel
        self.wings = wings
        if wings is None:
            self.wings_token = self.cfg.token
        else:
            wings.token = self.wings_token
            wings.on_refused = self.wings_refused

    @property
    def watched_file(self) -> Path | None:
        """Wings' file beside Wings; standalone, the daemon's own file (which then is the one
        holding the token)."""
        if self.config_path is None:
            return None
        own = Path(self.config_path)
        if not self.cfg.wings_config:
            return own
        wings = Path(self.cfg.wings_config)
        return wings if wings.is_absolute() else own.parent / wings

    @property
    def wings_file(self) -> Path | None:
        return self.watched_file if self.cfg.wings_config else None

    async def start(self, runner: web.BaseRunner, new_site: NewSite) -> None:
        """Watch the files from now on (the daemon listens on ``runner``'s sites; a move of
        the listener listens on a ``new_site``)."""
        self._runner = runner
        self._new_site = new_site
        self._marks = await asyncio.to_thread(self._look)
        watched = self.watched_file
        if watched is not None:
            read = await asyncio.to_thread(_read_with_signature, watched)
            self._watched_digest = hashlib.sha256(read[1]).hexdigest() if read else ""
        await self.check_wings_address()
        if self.pending:
            await self.probe_wings()
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        for task in (self._watcher, self._probing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- the token towards Wings -------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Wings still holds a token that is no longer the node's."""
        return self.wings is not None and self.wings_token != self.cfg.token

    async def probe_wings(self) -> bool:
        """Whether Wings takes the node's token now (one ``GET /api/system`` with it); from
        then on it is the one used towards Wings. Concurrent callers share one probe."""
        if not self.pending:
            return True
        if self._probing is None or self._probing.done():
            self._probing = asyncio.create_task(self._probe())
        return await asyncio.shield(self._probing)

    async def _probe(self) -> bool:
        wings, token = self.wings, self.cfg.token
        assert wings is not None
        try:
            async with wings.session.get(
                wings.url("/api/system"),
                headers={"Authorization": f"{BEARER} {token}", "Accept": "application/json"},
                timeout=PROBE_TIMEOUT,
            ) as r:
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("wings_token_probe_failed", error=repr(exc))
            return False
        if status != 200 or token != self.cfg.token:
            return False
        self.wings_token = token
        wings.token = token
        log.info("wings_token_followed", token_id=self.cfg.token_id)
        await self._save()
        return True

    async def wings_refused(self) -> bool:
        """Wings refused the token it was believed to hold (it restarted with the node's):
        True when the node's token works there now, and is used from now on."""
        return self.pending and await self.probe_wings()

    def credential_for_wings(self, credential: str) -> str:
        """``credential`` (a bearer token, or a panel-signed JWT) as Wings, which may still hold
        the earlier token, must see it: the node's token becomes the one Wings holds, a JWT
        signed with it is signed again with that one, and the earlier token (or a JWT signed
        with it) becomes one that is neither, so that Wings refuses it in its own words (an
        empty one would be a missing header to Wings: another answer)."""
        if not self.pending or not credential:
            return credential
        node, held = self.cfg.token, self.wings_token
        # surrogateescape: header bytes that are not UTF-8 are a wrong token, not a 500.
        presented = credential.encode("utf-8", "surrogateescape")
        if hmac.compare_digest(presented, node.encode()):
            return held
        if hmac.compare_digest(presented, held.encode()):
            return self._revoked()
        if credential.count(".") != 2:
            return credential
        try:
            header = jwt.get_unverified_header(credential)
            claims = jwt.decode(credential, node, algorithms=["HS256"], options=_JWT_OPTIONS)
        except jwt.InvalidTokenError:
            try:
                jwt.decode(credential, held, algorithms=["HS256"], options=_JWT_OPTIONS)
            except jwt.InvalidTokenError:
                return credential
            return self._revoked()
        extra = {k: v for k, v in header.items() if k not in ("alg", "typ")}
        return jwt.encode(claims, held, algorithm="HS256", headers=extra or None)

    def _revoked(self) -> str:
        return REVOKED if self.wings_token != REVOKED else REVOKED + "-"

    def headers_for_wings(self, headers: CIMultiDict[str]) -> bool:
        """Rewrite the bearer of a request passed through (see :meth:`credential_for_wings`);
        True when it was rewritten."""
        value = headers.get("Authorization")
        if value is None or not self.pending:
            return False
        scheme, space, credential = value.partition(" ")
        if scheme != BEARER or not space:
            return False
        translated = self.credential_for_wings(credential)
        if translated == credential:
            return False
        headers["Authorization"] = f"{BEARER} {translated}"
        return True

    def path_for_wings(self, path_qs: str) -> str:
        """The ``token`` query parameter of a request passed through (Wings' file download and
        upload links), as :meth:`credential_for_wings` has it."""
        if not self.pending or "?" not in path_qs:
            return path_qs
        path, _, query = path_qs.partition("?")
        parts = query.split("&")
        for i, part in enumerate(parts):
            name, eq, value = part.partition("=")
            if eq and unquote(name) == "token":
                translated = self.credential_for_wings(unquote(value))
                if translated != unquote(value):
                    parts[i] = f"{name}={quote(translated, safe='')}"
        return f"{path}?{'&'.join(parts)}"

    def auth_args_for_wings(self, args: list[str]) -> list[str]:
        """A websocket ``auth`` message's arguments (the JWT), for Wings."""
        return [self.credential_for_wings("".join(args))] if self.pending else args

    # -- applying changes --------------------------------------------------------------------

    async def apply(self, values: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The panel's push (call it holding :attr:`lock`): ``values`` by key (any of
        :data:`PERSISTED_KEYS`). Kept in the state file first, then applied. Returns the keys
        applied, and those kept for the next start (they could not be applied live)."""
        target = copy.deepcopy(self.cfg)
        for key, value in values.items():
            set_key(target, key, value)
        ssl_now, ssl_new = self.cfg.api.ssl, target.api.ssl
        if ssl_new.key.startswith(LETSENCRYPT_LIVE):
            ssl_new.cert, ssl_new.key = ssl_now.cert, ssl_now.key
        if ssl_new.enabled and (
            not ssl_now.enabled or (ssl_new.cert, ssl_new.key) != (ssl_now.cert, ssl_now.key)
        ):
            try:
                await asyncio.to_thread(tls_context, ssl_new.cert, ssl_new.key)
            except (OSError, ssl.SSLError, ValueError) as exc:
                # Kept would make the next start fail; as it is, the node keeps answering.
                log.error(
                    "panel_update_tls_refused",
                    cert=ssl_new.cert,
                    key=ssl_new.key,
                    error=str(exc),
                    fix="set api.ssl.cert and api.ssl.key in wingsbak's own file",
                )
                target.api.ssl = copy.deepcopy(ssl_now)
        changed = [k for k in PERSISTED_KEYS if get_key(target, k) != get_key(self.cfg, k)]
        for key in changed:
            value, over = get_key(target, key), self._file_values[key]
            if value == over:
                self.state.overrides.pop(key, None)
            else:
                self.state.overrides[key] = {"value": value, "over": over}
        self._note_wings_token(target.token)
        before = {k: v for k, v in self.state.overrides.items() if k in LISTENER_KEYS}
        await self._save()
        applied, kept = await self._apply_live(target)
        if self._runner is not None and any(k in LISTENER_KEYS for k in kept):
            # The address could not be taken (in use): kept, it would fail the next start.
            for key in LISTENER_KEYS:
                self.state.overrides.pop(key, None)
            self.state.overrides.update(before)
            kept = [k for k in kept if k not in LISTENER_KEYS]
            await self._save()
        for key in SHARED_BACKUP_KEYS:
            if key in changed:
                set_key(self.cfg, key, get_key(target, key))
                applied.append(key)
        return applied, kept

    async def reload(self, trigger: str) -> None:
        """Read both files again (SIGHUP, or a change of the watched file) and apply what
        changed: the live keys here, the reloadable ones as ``apply_reload`` does. A file that
        does not load changes nothing."""
        if self.config_path is None:
            log.warning("config_reload_skipped", reason="running on the embedded default")
            return
        async with self.lock:
            try:
                fresh = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                log.error("config_reload_refused", error=str(exc), trigger=trigger)
                return
            self._file_values = _values(fresh)
            if overlay(fresh, self.state):
                await self._save()
            self._note_wings_token(fresh.token)
            live_applied, kept = await self._apply_live(fresh)
            for key in LIVE_KEYS:  # what could not be applied is reported once, below
                set_key(fresh, key, get_key(self.cfg, key))
            applied, restart = apply_reload(self.cfg, fresh)
            log.info("config_reloaded", applied=live_applied + applied, trigger=trigger)
            if restart or kept:
                log.warning("config_changes_need_restart", keys=kept + restart)
        await self.check_wings_address()
        if self.pending:
            await self.probe_wings()

    def _note_wings_token(self, new_token: str) -> None:
        # A new node token leaves Wings with the one it has until it is seen to take the new.
        if self.wings is None:
            self.wings_token = new_token
        self.state.wings_token = "" if self.wings_token == new_token else self.wings_token

    async def _apply_live(self, target: Config) -> tuple[list[str], list[str]]:
        cfg = self.cfg
        applied: list[str] = []
        kept: list[str] = []
        identity = [k for k in IDENTITY_KEYS if get_key(target, k) != get_key(cfg, k)]
        if identity:
            token_changed = target.token != cfg.token
            cfg.token, cfg.token_id, cfg.remote = target.token, target.token_id, target.remote
            if self.panel is not None:
                self.panel.set_identity(cfg.remote, cfg.token_id, cfg.token)
            if token_changed:
                log.warning(
                    "node_token_changed", token_id=cfg.token_id, wings_has_it=not self.pending
                )
            applied += identity
        tls = [k for k in TLS_KEYS if get_key(target, k) != get_key(cfg, k)]
        if tls:
            ssl_new = target.api.ssl
            try:
                ctx = (
                    await asyncio.to_thread(tls_context, ssl_new.cert, ssl_new.key)
                    if ssl_new.enabled
                    else None
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.error("tls_not_applied", cert=ssl_new.cert, error=str(exc))
                kept += tls
            else:
                cfg.api.ssl = copy.deepcopy(ssl_new)
                self._use_tls(ctx)
                self._marks.update(await asyncio.to_thread(self._look_tls))
                applied += tls
        listener = [k for k in LISTENER_KEYS if get_key(target, k) != get_key(cfg, k)]
        if listener:
            if await self._rebind(target.api.host, target.api.port):
                applied += listener
            else:
                kept += listener
        return applied, kept

    def _use_tls(self, ctx: ssl.SSLContext | None) -> None:
        self.tls_context = ctx
        if self._runner is not None:
            for site in self._runner.sites:
                if isinstance(site, Site):
                    site.use_ssl_context(ctx)

    async def _rebind(self, host: str, port: int) -> bool:
        """Listen on ``host:port`` instead, without dropping an open connection: the new
        socket first, then the old one closed (the same port on another host: the other way
        round, as this process holds the port)."""
        runner, new_site = self._runner, self._new_site
        if runner is None or new_site is None:
            return False
        old = [s for s in runner.sites if isinstance(s, Site)]

        async def listen(h: str, p: int) -> Site | OSError:
            site = new_site(h, p, self.tls_context)
            try:
                await site.start()
            except OSError as exc:
                await site.stop()
                return exc
            return site

        made = await listen(host, port)
        same_port = port == self.cfg.api.port
        if isinstance(made, OSError) and made.errno == errno.EADDRINUSE and same_port:
            for site in old:
                await site.stop()
            old = []
            made = await listen(host, port)
            if isinstance(made, OSError):
                back = await listen(self.cfg.api.host, self.cfg.api.port)
                if isinstance(back, OSError):
                    log.critical("listener_lost", error=back.strerror)
        if isinstance(made, OSError):
            log.error("listener_not_moved", host=host, port=port, error=made.strerror)
            return False
        for site in old:
            await site.stop()
        self.cfg.api.host, self.cfg.api.port = host, port
        log.info("listener_moved", url=made.name)
        return True

    async def _save(self) -> None:
        async with self._save_lock:
            await asyncio.to_thread(self._save_now)

    def _save_now(self) -> None:
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            _write_private(self.state_file, self.state.to_json())
        except OSError as exc:
            log.error("node_state_not_saved", path=str(self.state_file), error=exc.strerror)

    # -- Wings' file -------------------------------------------------------------------------

    async def wings_ignores_updates(self) -> bool:
        """``ignore_panel_config_updates: true`` in Wings' file."""
        path = self.wings_file
        if path is None:
            return False
        raw = await asyncio.to_thread(_read_yaml_mapping, path)
        return bool(raw) and raw.get("ignore_panel_config_updates") is True

    async def check_wings_address(self) -> None:
        """An error when Wings' file has Wings listen on wingsbak's public address: what
        ``wings configure`` writes. Wings' next start would take the node's port, or fail."""
        path = self.wings_file
        if path is None or not self.cfg.upstream:
            return
        raw = await asyncio.to_thread(_read_yaml_mapping, path)
        listens = _listens(raw) if raw else None
        if listens is None:
            return
        host, port = listens
        if port == self.cfg.api.port and _overlaps(host, self.cfg.api.host):
            up_host, up_port, _tls = upstream_address(self.cfg.upstream)
            log.error(
                "wings_config_takes_public_address",
                wings_config=str(path),
                wings_listens=f"{host}:{port}",
                fix=(
                    f"in {path} set api.host: {up_host} and api.port: {up_port} (api.upstream), "
                    "then restart Wings; `wings configure` writes the public port again"
                ),
            )

    # -- watching ----------------------------------------------------------------------------

    def _look_tls(self) -> dict[str, Any]:
        ssl_cfg = self.cfg.api.ssl
        if not ssl_cfg.enabled:
            return {"tls": None}
        return {"tls": (_signature(ssl_cfg.cert), _signature(ssl_cfg.key))}

    def _look(self) -> dict[str, Any]:
        watched = self.watched_file
        return {"watched": _signature(watched) if watched else None, **self._look_tls()}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.api.watch_interval)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("watch_failed")

    async def _tick(self) -> None:
        marks = await asyncio.to_thread(self._look)
        watched = self.watched_file
        if watched is not None and marks["watched"] != self._marks.get("watched"):
            settled = await self._settled(watched)
            if settled is not None:
                self._marks["watched"] = settled[0]
                digest = hashlib.sha256(settled[1]).hexdigest()
                if digest != self._watched_digest:
                    self._watched_digest = digest
                    log.info("config_file_changed", path=str(watched))
                    await self.reload("file_changed")
                elif self.pending:
                    # Rewritten as it was: Wings writes its file at every start.
                    await self.probe_wings()
        if marks["tls"] != self._marks.get("tls") and self.cfg.api.ssl.enabled:
            await self._renew_tls(marks["tls"])
        if self.pending:
            await self.probe_wings()

    async def _settled(self, path: Path) -> tuple[Any, bytes] | None:
        """The file's signature and bytes, once two reads a moment apart agree."""
        first = await asyncio.to_thread(_read_with_signature, path)
        await asyncio.sleep(min(SETTLE_SECONDS, self.cfg.api.watch_interval / 2))
        second = await asyncio.to_thread(_read_with_signature, path)
        if first is None or first != second:
            return None
        return second

    async def _renew_tls(self, marks: Any) -> None:
        ssl_cfg = self.cfg.api.ssl
        try:
            ctx = await asyncio.to_thread(tls_context, ssl_cfg.cert, ssl_cfg.key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Half renewed (a new certificate beside the old key), or gone: the next look
            # tries again; said once per state of the files.
            if marks != self._tls_refused:
                self._tls_refused = marks
                log.warning("tls_certificate_not_reloaded", cert=ssl_cfg.cert, error=str(exc))
            return
        self._marks["tls"] = marks
        self._tls_refused = None
        self._use_tls(ctx)
        log.info("tls_certificate_reloaded", cert=ssl_cfg.cert, key=ssl_cfg.key)


IDENTITY = web.AppKey("identity", NodeIdentity)
