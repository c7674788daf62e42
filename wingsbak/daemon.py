"""``wingsbak serve``: load the configuration, run the API, stop gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import ssl
from pathlib import Path

from wingsbak import __version__
from wingsbak.config import Config, ConfigError, default_config, load_config, prepare_directories
from wingsbak.http.app import create_app
from wingsbak.http.server import start_server
from wingsbak.log import get_logger

log = get_logger(__name__)

SYSTEM_CONFIG = Path("/etc/pterodactyl/config.yml")


def resolve_config(path: str | None) -> Config:
    """--config, then $WINGSBAK_CONFIG, then /etc/pterodactyl/config.yml, then the default."""
    chosen = path or os.environ.get("WINGSBAK_CONFIG") or None
    if chosen is None and SYSTEM_CONFIG.is_file():
        chosen = str(SYSTEM_CONFIG)
    if chosen is None:
        return default_config()
    return load_config(chosen)


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


async def run(cfg: Config, *, ready: asyncio.Event | None = None) -> None:
    open_files = raise_open_files_limit()
    runner = await start_server(create_app(cfg), cfg.api, ssl_context=_ssl_context(cfg))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheme = "https" if cfg.api.ssl.enabled else "http"
    log.info(
        "wingsbak_started",
        version=__version__,
        url=f"{scheme}://{cfg.api.host}:{cfg.api.port}",
        data=cfg.system.data,
        backups=cfg.system.backup_directory,
        panel=cfg.remote or None,
        pid=os.getpid(),
        open_files=open_files,
    )
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("wingsbak_stopping", grace=cfg.system.backups.shutdown_grace)
    # runner.cleanup stops the listening sockets first, then runs on_shutdown, which lets
    # running backups finish within the grace period and reports the rest as failed.
    await runner.cleanup()
    log.info("wingsbak_stopped")


def serve(config_path: str | None) -> int:
    try:
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
    asyncio.run(run(cfg))
    return 0
