"""Typed configuration in Wings' key names.

A Wings ``config.yml`` loads unchanged: keys wingsbak does not know are ignored, every key it
knows has a default, and a known key with a bad value is refused with a message that names it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import secrets
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from wingsbak.formats import BEST_SPEED, CHECKSUM_TYPES, COMPRESSION_LEVELS
from wingsbak.patterns import compile_pattern

T = TypeVar("T")
# Which Wings the upstream is (api.upstream_flavour); local backups are laid out as it lays out
# its own (wingsbak.storage.backupdir).
AUTO, PELICAN, PTERODACTYL = "auto", "pelican", "pterodactyl"
UPSTREAM_FLAVOURS = (AUTO, PELICAN, PTERODACTYL)


class ConfigError(ValueError):
    """A configuration value that wingsbak refuses, with the key that holds it."""


# Metadata of a field whose value is a secret, or may hold one (a repository URL's password):
# a refusal names the key and the kind of value, never the value (it is logged).
SECRET = types.MappingProxyType({"secret": True})
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def _shown(value: Any, secret: bool) -> str:
    """``value`` as a refusal quotes it: only its kind under a secret key."""
    return _kind(value) if secret else repr(value)


@dataclass(slots=True)
class SslConfig:
    enabled: bool = False
    cert: str = ""
    key: str = ""


@dataclass(slots=True)
class ApiConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    ssl: SslConfig = field(default_factory=SslConfig)
    # Largest JSON body accepted by the API, in bytes.
    max_body_bytes: int = 64 * 1024
    # Serve /metrics without the bearer token (for a scraper on a private network).
    metrics_public: bool = False
    # Seconds a client has to send a request's header: from its first byte, or from the
    # accept for a new connection.
    header_timeout: float = 20.0
    # Longest silence, in seconds, while a request body is arriving: a body that keeps coming
    # may take as long as it needs (a large upload), one that stops is refused.
    body_timeout: float = 60.0
    # Seconds an idle keep-alive connection is kept between two requests.
    keepalive_timeout: float = 75.0
    # Connections from one client address still sending their request head (from the accept,
    # TLS handshake included, to the end of the head); 0 = no cap. Answered requests, idle
    # keep-alive connections and open websockets are not counted.
    max_connections_per_address: int = 64
    # Addresses or CIDRs (Wings' key) of proxies in front of the node: never counted.
    trusted_proxies: list[str] = field(default_factory=list)
    # Seconds a websocket may stay open without a successful `auth` message.
    websocket_auth_timeout: float = 15.0
    # Wings' own API on this node (e.g. http://127.0.0.1:8081): wingsbak then stands in front
    # of it and passes every route it does not own through. Empty: standalone.
    upstream: str = ""
    # PEM CA bundle that signs an https upstream's certificate; empty: the system's CAs.
    upstream_ca: str = ""
    # Seconds between two looks at Wings' file (wings_config) and the certificate files: a
    # change is applied within this plus a moment to see the file written whole.
    watch_interval: float = 5.0
    # Which Wings the upstream is (auto: learnt from its answers; pelican; pterodactyl): local
    # backups are named, and a server's deletion cleans up, as that Wings does.
    upstream_flavour: str = "auto"


@dataclass(slots=True)
class QuiesceRule:
    """One game's way to pause saving. ``image`` and ``invocation`` are RE2 patterns searched
    in the server's container image and startup command (Wings' server details); a rule
    matches when every pattern it gives matches. ``wait_timeout`` 0: console_wait_timeout."""

    name: str = ""
    image: str = ""
    invocation: str = ""
    before: list[str] = field(default_factory=list)
    wait_for: str = ""
    wait_timeout: float = 0.0
    settle: float = 0.0
    after: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BackupsConfig:
    # MiB/s written by the archiver (and by restores); 0 = unlimited.
    write_limit: int = 0
    compression_level: str = BEST_SPEED
    checksum: str = "sha1"
    # Backups running at once across the node; one per server in any case.
    max_concurrent: int = 2
    # Seconds a stopping daemon waits for running backups before failing them.
    shutdown_grace: float = 30.0
    # Hosts (names or addresses/CIDRs) a restore may download from although they are private.
    restore_host_allowlist: list[str] = field(default_factory=list)
    # A backup that cannot read some of its entries (no access, I/O errors) fails; true: it
    # succeeds without them, with their count in its log line, metrics and event.
    allow_skipped: bool = False
    # Seconds a restore waits for the next byte of its download, and for the whole of it
    # (from its first read to its last byte; S3 bodies too), before it fails.
    restore_idle_timeout: float = 60.0
    restore_deadline: float = 86400.0
    # Backoff of undelivered panel reports: first delay and ceiling, in seconds.
    report_retry_initial: float = 1.0
    report_retry_max: float = 60.0
    # In front of Wings: seconds a restore waits for Wings to stop a running server.
    restore_stop_timeout: float = 120.0
    # In front of Wings: console commands sent to a running server before a backup reads its
    # files (e.g. save-off, save-all flush), seconds to wait after them, and commands sent
    # once the archive is read, whether or not the backup succeeded (e.g. save-on).
    console_before: list[str] = field(default_factory=list)
    console_settle: float = 0.0
    console_after: list[str] = field(default_factory=list)
    # A regular expression (RE2) the game prints once its files are saved, read from Wings'
    # console websocket after console_before, and how long to wait for it (then the backup
    # goes on, said to be maybe inconsistent); empty: no wait, only console_settle.
    console_wait_for: str = ""
    console_wait_timeout: float = 60.0
    # Per-game rules, the first matching the server's image or startup invocation wins;
    # the console_* keys above apply to servers no rule matches (see QuiesceRule).
    quiesce: list[QuiesceRule] = field(default_factory=list)
    # Clone the server's files (FICLONE, on XFS or btrfs) while saving is paused and archive
    # the clone, so that saving resumes within a second; false: read the live files.
    clone_files: bool = True
    # Free space a local backup (or the pre-signed flow's temporary file) must leave on its
    # file system, after its estimated size: bytes, or a percentage of the file system.
    min_free_space: str = "5%"
    # Where backups of the panel's ``wings`` adapter go (its ``s3`` adapter is always the
    # panel's pre-signed flow): the name of a store (wingsbak.storage.select.REGISTERED).
    store: str = "local"
    # Each store's own block (system.backups.<its key>) as the store parsed and checked it
    # (wingsbak.storage.select.validate): its typed settings, by key.
    settings: dict[str, Any] = field(
        default_factory=dict, metadata={"internal": True, "settings": True}
    )
    # In front of Wings: the name of the read-only folder at a server's root in the panel's
    # file manager that shows its backups (wingsbak/wings/browse.py); empty: not shown.
    browse_folder: str = ".backups"
    # Seconds between two checks of every stored backup (each store checks its own: archives
    # read whole, repositories a slice at a time); 0: never.
    verify_interval: float = 86400.0
    # MiB/s those checks read from an archive; 0: unlimited.
    verify_read_limit: float = 50.0
    # A JSON POST (Discord and Slack webhooks take it as is) for every failed backup or
    # restore and every backup that fails its check; empty: none.
    notify_url: str = ""
    # The mapping as read: the stores' blocks are the stores' to parse (see settings_of).
    raw: dict[str, Any] = field(default_factory=dict, metadata={"internal": True, "raw": True})

    def settings_of(self, key: str, parse: Callable[[Any], T]) -> T:
        """A store's settings (``system.backups.<key>``): as checked when the configuration
        was read, else parsed with ``parse`` from the mapping now."""
        if key not in self.settings:
            self.settings[key] = parse(self.raw.get(key))
        return typing.cast(T, self.settings[key])

    def __getattr__(self, name: str) -> Any:
        # ``system.backups.<key>`` of a store, read as an attribute (untyped: the store's
        # own accessor is typed).
        if name.startswith("__") or name in ("settings", "raw"):
            raise AttributeError(name)
        try:
            return self.settings[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(slots=True)
class UserConfig:
    uid: int = 988
    gid: int = 988


@dataclass(slots=True)
class SystemConfig:
    data: str = "/var/lib/pterodactyl/volumes"
    backup_directory: str = "/var/lib/pterodactyl/backups"
    user: UserConfig = field(default_factory=UserConfig)
    backups: BackupsConfig = field(default_factory=BackupsConfig)


@dataclass(slots=True)
class Config:
    # Wings' config.yml, read for the node's identity and paths (see load_config); empty: this
    # file holds everything.
    wings_config: str = ""
    uuid: str = ""
    token_id: str = ""
    token: str = field(default="", metadata=SECRET)
    remote: str = ""
    api: ApiConfig = field(default_factory=ApiConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    # Wings' key: the panel's configuration push (POST /api/update) is answered
    # {"applied": false} and changes nothing. True in this file or in Wings' file counts.
    ignore_panel_config_updates: bool = False
    # Set when the token was generated for an embedded default configuration.
    generated_token: bool = field(default=False, metadata={"internal": True})

    @property
    def data_dir(self) -> Path:
        return Path(self.system.data)

    @property
    def backup_dir(self) -> Path:
        return Path(self.system.backup_directory)

    @property
    def upstream(self) -> str:
        """Wings' API URL without a trailing slash; empty when standalone."""
        return self.api.upstream.rstrip("/")


def _check_scalar(key: str, value: Any, typ: Any, secret: bool = False) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_shown(value, secret)}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_shown(value, secret)}")
    if typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {_shown(value, secret)}")
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {_shown(value, secret)}")
    origin = typing.get_origin(typ)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_kind(value)}")
        _key_type, item_type = typing.get_args(typ)
        # Values may be secrets: a refusal names the entry, never its value.
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ConfigError(f"{key}: entry names must be non-empty strings")
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise ConfigError(f"{key}.{k}: expected a string")
            out[k] = str(v)
        return out
    if origin is list:
        (item_type,) = typing.get_args(typ)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_shown(value, secret)}")
        return [
            _check_scalar(f"{key}[{i}]", v, item_type, secret) for i, v in enumerate(value)
        ]
    raise ConfigError(f"{key}: unsupported type {typ!r}")  # pragma: no cover


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("raw"):
            values[f.name] = dict(raw)
            continue
        if f.metadata.get("internal") or f.name not in raw:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        typ = hints[f.name]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            values[f.name] = _build(typ, raw[f.name], key)
        elif typing.get_origin(typ) is list and dataclasses.is_dataclass(typing.get_args(typ)[0]):
            items = raw[f.name] if raw[f.name] is not None else []
            if not isinstance(items, list):
                raise ConfigError(f"{key}: expected a list, got {_kind(items)}")
            item = typing.get_args(typ)[0]
            values[f.name] = [_build(item, v, f"{key}[{i}]") for i, v in enumerate(items)]
        elif isinstance(typ, types.UnionType):  # pragma: no cover - no optional keys yet
            values[f.name] = raw[f.name]
        else:
            secret = bool(f.metadata.get("secret"))
            values[f.name] = _check_scalar(key, raw[f.name], typ, secret)
    return cls(**values)


def build_settings(cls: type[T], raw: Any, key: str) -> T:
    """A store's settings dataclass from its block as read (None: absent, all defaults),
    each value checked against its field's type as every key here is; ``key``: the block's
    key (``system.backups.<key>``). A field with :data:`SECRET` metadata is never quoted."""
    built: T = _build(cls, raw, key)
    return built


def _validate(cfg: Config) -> None:
    b = cfg.system.backups
    if b.compression_level not in COMPRESSION_LEVELS:
        raise ConfigError(
            f"system.backups.compression_level: {b.compression_level!r} is not one of "
            + ", ".join(COMPRESSION_LEVELS)
        )
    if b.checksum not in CHECKSUM_TYPES:
        raise ConfigError(
            f"system.backups.checksum: {b.checksum!r} is not one of " + ", ".join(CHECKSUM_TYPES)
        )
    if b.write_limit < 0:
        raise ConfigError("system.backups.write_limit: must be 0 (unlimited) or positive")
    if b.max_concurrent < 1:
        raise ConfigError("system.backups.max_concurrent: must be at least 1")
    if b.shutdown_grace < 0:
        raise ConfigError("system.backups.shutdown_grace: must not be negative")
    for key in ("restore_idle_timeout", "restore_deadline"):
        if getattr(b, key) <= 0:
            raise ConfigError(f"system.backups.{key}: must be a positive number of seconds")
    if b.report_retry_initial <= 0 or b.report_retry_max < b.report_retry_initial:
        raise ConfigError(
            "system.backups.report_retry_initial must be positive and report_retry_max at "
            "least as large"
        )
    _validate_checks(b)
    if not 0 < cfg.api.port < 65536:
        raise ConfigError(f"api.port: {cfg.api.port} is not a TCP port")
    for name in ("header_timeout", "body_timeout", "keepalive_timeout", "websocket_auth_timeout"):
        if not 0 < getattr(cfg.api, name) < math.inf:
            raise ConfigError(f"api.{name}: must be a positive number of seconds")
    if not 0 < cfg.api.watch_interval < math.inf:
        raise ConfigError("api.watch_interval: must be a positive number of seconds")
    if cfg.api.max_connections_per_address < 0:
        raise ConfigError("api.max_connections_per_address: must be 0 (no cap) or positive")
    for i, entry in enumerate(cfg.api.trusted_proxies):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"api.trusted_proxies[{i}]: {entry!r} is not an IP address or CIDR"
            ) from None
    if cfg.api.ssl.enabled:
        for name in ("cert", "key"):
            path = getattr(cfg.api.ssl, name)
            if not path or not os.access(path, os.R_OK):
                raise ConfigError(f"api.ssl.{name}: {path!r} is not a readable file")
    if cfg.remote and not cfg.remote.startswith(("http://", "https://")):
        raise ConfigError(f"remote: {cfg.remote!r} is not an http(s) URL")
    _validate_front(cfg)


def _validate_front(cfg: Config) -> None:
    b = cfg.system.backups
    upstream = cfg.api.upstream.strip()
    if upstream:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ConfigError(
                f"api.upstream: {cfg.api.upstream!r} is not an http(s) URL of Wings' API "
                "(e.g. http://127.0.0.1:8081)"
            )
        if parts.path.strip("/"):
            raise ConfigError(f"api.upstream: {cfg.api.upstream!r} must not have a path")
    if cfg.api.upstream_flavour not in UPSTREAM_FLAVOURS:
        raise ConfigError(
            f"api.upstream_flavour: {cfg.api.upstream_flavour!r} is not one of "
            + ", ".join(UPSTREAM_FLAVOURS)
        )
    if cfg.api.upstream_ca and not os.access(cfg.api.upstream_ca, os.R_OK):
        raise ConfigError(f"api.upstream_ca: {cfg.api.upstream_ca!r} is not a readable file")
    if b.restore_stop_timeout <= 0:
        raise ConfigError("system.backups.restore_stop_timeout: must be positive")
    _validate_console("system.backups.console_", b.console_before, b.console_after)
    if b.browse_folder in (".", "..") or "/" in b.browse_folder or "\x00" in b.browse_folder:
        raise ConfigError("system.backups.browse_folder: must be one file name, or empty")
    if b.console_settle < 0:
        raise ConfigError("system.backups.console_settle: must not be negative")
    if not 0 < b.console_wait_timeout < math.inf:
        raise ConfigError("system.backups.console_wait_timeout: must be a positive number")
    check_pattern("system.backups.console_wait_for", b.console_wait_for)
    for i, rule in enumerate(b.quiesce):
        key = f"system.backups.quiesce[{i}]"
        if not (rule.image or rule.invocation):
            raise ConfigError(f"{key}: needs image or invocation (a pattern to match)")
        for name in ("image", "invocation", "wait_for"):
            check_pattern(f"{key}.{name}", getattr(rule, name))
        if rule.settle < 0 or not 0 <= rule.wait_timeout < math.inf:
            raise ConfigError(f"{key}: settle and wait_timeout must not be negative")
        _validate_console(f"{key}.", rule.before, rule.after)
    parse_min_free_space(b.min_free_space)


def _validate_console(prefix: str, before: list[str], after: list[str]) -> None:
    for key, commands in (("before", before), ("after", after)):
        for i, command in enumerate(commands):
            if not command.strip() or "\n" in command or "\r" in command:
                raise ConfigError(
                    f"{prefix}{key}[{i}]: {command!r} is not one console command line"
                )


def check_pattern(key: str, pattern: str) -> None:
    """Refuse a pattern the console matcher (RE2, linear time) cannot compile."""
    if not pattern:
        return
    try:
        compile_pattern(pattern)
    except ValueError as exc:
        raise ConfigError(f"{key}: {pattern!r} is not a regular expression: {exc}") from None


def parse_min_free_space(text: str) -> tuple[int, float]:
    """``system.backups.min_free_space`` as (bytes, fraction of the file system); one is 0."""
    value = text.strip().replace(" ", "")
    try:
        if value.endswith("%"):
            fraction = float(value[:-1]) / 100
            if 0 <= fraction < 1:
                return 0, fraction
        elif value.isdigit():
            return int(value), 0.0
    except ValueError:
        pass
    raise ConfigError(
        f"system.backups.min_free_space: {text!r} is not a number of bytes or a percentage "
        "below 100 (e.g. 5%)"
    )


def _validate_checks(b: BackupsConfig) -> None:
    if not 0 <= b.verify_interval < math.inf:
        raise ConfigError("system.backups.verify_interval: must be 0 (never) or seconds")
    if not 0 <= b.verify_read_limit < math.inf:
        raise ConfigError("system.backups.verify_read_limit: must be 0 (unlimited) or MiB/s")
    url = b.notify_url.strip()
    if url:
        try:
            parts = urlsplit(url)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            usable = False
        if not usable:
            # The URL may hold a webhook's token: the refusal does not repeat it.
            raise ConfigError("system.backups.notify_url: not an http(s) URL")


def parse_config(raw: Any) -> Config:
    """Build a validated :class:`Config` from the parsed YAML document."""
    cfg = _build(Config, raw, "")
    _validate(cfg)
    return cfg


# What wingsbak reads from Wings' config.yml (``wings_config``): the node's identity and paths.
# Everything else there is Wings' own (its listen address and TLS above all: wingsbak's are in
# its own file); wingsbak never writes it.
WINGS_KEYS = (
    ("uuid",),
    ("token_id",),
    ("token",),
    ("remote",),
    ("system", "data"),
    ("system", "backup_directory"),
    ("system", "user"),
)

# Keys a SIGHUP applies to the running daemon: those read afresh by every job or request.
# Any other changed key is logged as needing a restart (listen address, TLS, paths, the token,
# the upstream, the stores' settings, the concurrency limit: objects built once at start hold them).
RELOADABLE_KEYS = frozenset(
    {
        "system.backups.write_limit",
        "system.backups.compression_level",
        "system.backups.checksum",
        "system.backups.shutdown_grace",
        "system.backups.restore_host_allowlist",
        "system.backups.restore_stop_timeout",
        "system.backups.console_before",
        "system.backups.console_settle",
        "system.backups.console_after",
        "system.backups.console_wait_for",
        "system.backups.console_wait_timeout",
        "system.backups.quiesce",
        "system.backups.clone_files",
        "system.backups.min_free_space",
        "api.metrics_public",
        "api.watch_interval",
        "ignore_panel_config_updates",
    }
)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint with its line and column, without its snippet of the file (the line
    may hold the token) or a quoted value; token names ('<scalar>') and punctuation stay."""

    def quoted(match: re.Match[str]) -> str:
        inner = match.group(2)
        keep = re.fullmatch(r"<[\w ]+>|[^\w\s]", inner) is not None
        return match.group(0) if keep else ""

    def unquoted(text: str) -> str:
        return re.sub(r"(\s*)'([^']*)'", quoted, text)

    if isinstance(exc, yaml.MarkedYAMLError):
        parts = []
        for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
            if text:
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                parts.append(unquoted(text) + where)
        return ": ".join(parts) or "syntax error"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"a character YAML does not allow (at character {exc.position + 1})"
    return type(exc).__name__


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: mappings merge key by key, anything else in ``over`` wins."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _wings_identity(path: Path) -> dict[str, Any]:
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"wings_config: {path} is not a Wings configuration (no mapping)")
    picked: dict[str, Any] = {}
    for key in WINGS_KEYS:
        node: Any = raw
        for part in key:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            continue
        target = picked
        for part in key[:-1]:
            target = target.setdefault(part, {})
        target[key[-1]] = node
    return picked


def load_config(
    path: str | os.PathLike[str], check: Callable[[Config], None] = lambda cfg: None
) -> Config:
    """Read ``path``; when it names ``wings_config``, Wings' file supplies the identity and
    paths (:data:`WINGS_KEYS`) and ``path``'s own keys are laid over them. ``check``: what
    the layers above check of it (the stores: wingsbak.storage.select.validate)."""
    own = Path(path)
    raw = _read_yaml(own)
    if isinstance(raw, dict) and raw.get("wings_config"):
        wings = Path(str(raw["wings_config"]))
        if not wings.is_absolute():
            wings = own.parent / wings
        raw = deep_merge(_wings_identity(wings), raw)
    cfg = parse_config(raw)
    check(cfg)
    if not cfg.token:
        raise ConfigError("token: must be set (the node token the panel signs with)")
    return cfg


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("settings"):
            for name, settings in value.items():
                out.update(_flatten(settings, f"{prefix}{name}."))
            continue
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def apply_reload(current: Config, fresh: Config) -> tuple[list[str], list[str]]:
    """Copy the changed :data:`RELOADABLE_KEYS` of ``fresh`` into ``current`` (which the
    running daemon holds). Returns (keys applied, changed keys that need a restart)."""
    old, new = _flatten(current), _flatten(fresh)
    applied: list[str] = []
    restart: list[str] = []
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if key not in RELOADABLE_KEYS:
            restart.append(key)
            continue
        *parents, name = key.split(".")
        target: Any = current
        for part in parents:
            target = getattr(target, part)
        setattr(target, name, value)
        applied.append(key)
    return applied, restart


def default_config(base: str | os.PathLike[str] = "wingsbak-data") -> Config:
    """The embedded configuration for a laptop: everything under ``base``, no panel."""
    root = Path(base).absolute()
    cfg = Config(
        uuid="00000000-0000-4000-8000-000000000000",
        token_id="local",
        token=secrets.token_urlsafe(32),
        api=ApiConfig(host="127.0.0.1", port=8080),
        system=SystemConfig(data=str(root / "volumes"), backup_directory=str(root / "backups")),
        generated_token=True,
    )
    _validate(cfg)
    return cfg


def prepare_directories(cfg: Config) -> None:
    """Create the data and backup directories, refusing ones that cannot be used."""
    for key, path in (
        ("system.data", cfg.data_dir),
        ("system.backup_directory", cfg.backup_dir),
    ):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot create {path}: {exc.strerror}") from exc
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: {path} is not readable and writable")
