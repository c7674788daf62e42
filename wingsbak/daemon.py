"""``wingsbak serve``: load the configuration, run the API, stop gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import ssl
from pathlib import Path
from typing import Protocol

from aiohttp import web

from wingsbak import __version__
from wingsbak.config import (
    Config,
    ConfigError,
    default_config,
    prepare_directories,
)
from wingsbak.http.app import create_app
from wingsbak.http.server import GuardedSite, start_server
from wingsbak.log import get_logger
from wingsbak.node import Node
from wingsbak.storage.select import load_config, validate
from wingsbak.wings.identity import NodeIdentity

log = get_logger(__name__)


class Hangups(Protocol):
    """SIGHUPs noted while the daemon started (the command line's, which notes them)."""

    def take(self) -> int: ...


# Without --config or $WINGSBAK_CONFIG, the first that exists: wingsbak's own file (beside
# Wings), then Pterodactyl's and Pelican's Wings file (standalone).
SYSTEM_CONFIGS = (
    Path("/etc/wingsbak/config.yml"),
    Path("/etc/pterodactyl/config.yml"),
    Path("/etc/pelican/config.yml"),
)


def config_source(path: str | None) -> str | None:
    """--config, then $WINGSBAK_CONFIG, then the first of :data:`SYSTEM_CONFIGS`; None: the
    embedded default."""
    chosen = path or os.environ.get("WINGSBAK_CONFIG") or None
    if chosen is None:
        chosen = next((str(p) for p in SYSTEM_CONFIGS if p.is_file()), None)
    return chosen


def resolve_config(path: str | None) -> Config:
    """The configuration the daemon and the command line use, the stores' part checked."""
    chosen = config_source(path)
    if chosen is not None:
        return load_config(chosen)
    cfg = default_config()
    validate(cfg)
    return cfg


def build_app(cfg: Config, identity: NodeIdentity | None = None) -> web.Application:
    """The node built from ``cfg`` and the application that routes to it, not yet started
    (``identity``: see :class:`wingsbak.node.Node`)."""
    return create_app(Node(cfg, identity))


def _ssl_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.api.ssl.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.api.ssl.cert, cfg.api.ssl.key)
    return ctx


def raise_open_files_limit(ceiling: int = 65536) -> int:
    """Lift the soft limit on open descriptors towards the hard one (systemd's soft default
    is 1024): a backup holds two per directory level, and running out fails the backup. The
    limit in force afterwards is returned."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("open_files_limit_kept", soft=soft, hard=hard, error=str(exc))
    return soft


async def run(
    cfg: Config,
    *,
    ready: asyncio.Event | None = None,
    config_path: str | None = None,
    hangups: Hangups | None = None,
) -> None:
    open_files = raise_open_files_limit()
    # Before the listener: what the panel pushed earlier (its port, its TLS) is laid over cfg.
    identity = NodeIdentity(cfg, config_path=config_path)
    app = build_app(cfg, identity)
    runner = await start_server(app, cfg.api, ssl_context=identity.tls_context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        # Both files again; the app holds cfg, the identity applies what it holds live.
        task = asyncio.create_task(identity.reload("sighup"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)

    def new_site(host: str, port: int, tls: ssl.SSLContext | None) -> GuardedSite:
        return GuardedSite(runner, host, port, api=cfg.api, ssl_context=tls)

    await identity.start(runner, new_site)
    scheme = "https" if cfg.api.ssl.enabled else "http"
    log.info(
        "wingsbak_started",
        version=__version__,
        url=f"{scheme}://{cfg.api.host}:{cfg.api.port}",
        config=config_path,
        data=cfg.system.data,
        backups=cfg.system.backup_directory,
        panel=cfg.remote or None,
        wings=cfg.upstream or None,
        state=str(identity.state_file),
        pid=os.getpid(),
        open_files=open_files,
    )
    # A reload asked for while the daemon started (the handler above replaced the one that
    # noted it) reads the files again now: they may have changed after they were read.
    if hangups is not None and (count := hangups.take()):
        log.info("config_reload_after_start", signals=count)
        on_hangup()
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("wingsbak_stopping", grace=cfg.system.backups.shutdown_grace)
    await identity.stop()
    # runner.cleanup stops the listening sockets first, then runs on_shutdown, which lets
    # running backups finish within the grace period and reports the rest as failed.
    await runner.cleanup()
    log.info("wingsbak_stopped")


def serve(config_path: str | None, hangups: Hangups | None = None) -> int:
    """Run the daemon; ``hangups`` holds the SIGHUPs noted while it started (see
    the command line's ``Hangups``)."""
    try:
        config_path = config_source(config_path)
        cfg = resolve_config(config_path)
        prepare_directories(cfg)
    except ConfigError as exc:
        log.error("configuration_refused", error=str(exc))
        print(f"wingsbak: {exc}", flush=True)
        return 2
    if cfg.generated_token:
        # Printed once for the person who started it; never logged.
        print(
            f"wingsbak: no configuration found, using the embedded default.\n"
            f"  data:    {cfg.system.data}\n  backups: {cfg.system.backup_directory}\n"
            f"  API:     http://{cfg.api.host}:{cfg.api.port}\n  token:   {cfg.token}",
            flush=True,
        )
    asyncio.run(run(cfg, config_path=config_path, hangups=hangups))
    # The closed loop gave SIGHUP its default action back: the daemon is stopping, and a
    # late reload must not turn that into a death by signal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return 0
