"""The aiohttp application: wiring only; each route group lives in its own module."""

from __future__ import annotations

import asyncio

from aiohttp import web

from wingsbak.appkeys import CONFIG, EVENTS, JOBS, OUTBOX, PANEL, STORAGE, STORES, USED_TOKENS
from wingsbak.config import Config
from wingsbak.events import EventBus
from wingsbak.http import (
    backups,
    download,
    events_ws,
    restore,
    sendfile,
    system,
)
from wingsbak.http.middleware import errors_middleware, make_auth_middleware, make_identify
from wingsbak.jobs import JobManager
from wingsbak.notify import WebhookClient
from wingsbak.panel import Outbox, PanelClient
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.tokens import UsedTokens
from wingsbak.verify.schedule import Verifier
from wingsbak.watch import Watch
from wingsbak.wings import config_push, hold, proxy, relay
from wingsbak.wings import lifecycle as server_lifecycle
from wingsbak.wings.client import WINGS, WingsClient
from wingsbak.wings.flavour import WingsFlavour
from wingsbak.wings.identity import IDENTITY, NodeIdentity


def create_app(config: Config, identity: NodeIdentity | None = None) -> web.Application:
    """``identity``: the node's live identity, made by the daemon before it listens (it may
    change ``config`` from wingsbak's state); one of its own otherwise."""
    app = web.Application(
        middlewares=[errors_middleware, make_auth_middleware(lambda: config.token)],
        client_max_size=config.api.max_body_bytes,
        # In front of Wings, request bodies stream through in larger reads (see wings/proxy.py) and
        # as sent: a gzip-encoded upload is Wings' to decode.
        handler_args={"read_bufsize": proxy.BUFFER, "auto_decompress": False}
        if config.upstream
        else None,
    )
    # Which Wings is in front of: local backups are named as it names its own.
    flavour = WingsFlavour(
        forced=config.api.upstream_flavour,
        fronting=bool(config.upstream),
        state_dir=config.backup_dir,
    )
    storage = BackupDirectory(config.backup_dir, flavour)
    panel = PanelClient(config.remote, config.token_id, config.token)
    notify = WebhookClient(config.system.backups.notify_url)
    outbox = Outbox(
        panel,
        config.backup_dir,
        retry_initial=config.system.backups.report_retry_initial,
        retry_max=config.system.backups.report_retry_max,
        notify=notify,
    )
    events = EventBus()
    # In front of Wings (api.upstream): Wings' API for the pass-through and for the jobs.
    wings = (
        WingsClient(config.upstream, config.token, config.api.upstream_ca)
        if config.upstream
        else None
    )
    identity = identity or NodeIdentity(config)
    identity.attach(panel=panel, wings=wings)
    app[IDENTITY] = identity
    lifecycle: server_lifecycle.ServerLifecycle | None = None
    app[CONFIG] = config
    app[STORAGE] = storage
    app[PANEL] = panel
    app[OUTBOX] = outbox
    app[EVENTS] = events
    app[USED_TOKENS] = UsedTokens(config.backup_dir)
    app[JOBS] = JobManager(config, storage=storage, outbox=outbox, events=events, wings=wings)
    app[STORES] = app[JOBS].stores
    watch = Watch(config, app[JOBS].metrics, outbox)
    app[JOBS].on_job_end = watch.job_end
    verifier = Verifier(config, app[JOBS], watch)
    app.on_response_prepare.append(make_identify(lambda: app[CONFIG].token_id))
    app.add_routes(backups.routes)
    app.add_routes(download.routes)
    app.add_routes(restore.routes)
    config_push.add_routes(app)
    if wings is None:
        app.add_routes(system.routes)
        app.add_routes(events_ws.routes)
    else:
        app[WINGS] = wings
        # GET /api/system is Wings' (the panel's node page reads Wings' fields from it).
        app.add_routes([r for r in system.routes if getattr(r, "path", "") != "/api/system"])
        relay.add_routes(app)
        flavour.attach(wings)
        lifecycle = server_lifecycle.ServerLifecycle(config, app[JOBS], wings, flavour)
        server_lifecycle.add_routes(app, lifecycle)
        hold.add_routes(app)  # before the pass-through's catch-all
        proxy.add_routes(app)

    async def startup(app: web.Application) -> None:
        await asyncio.to_thread(app[USED_TOKENS].load)
        await asyncio.to_thread(flavour.load)
        await outbox.load()
        await watch.start()
        await app[JOBS].recover()
        app[STORES].start()
        await verifier.start()
        if lifecycle is not None:
            await lifecycle.start()  # removals an earlier run left go on

    async def shutdown(app: web.Application) -> None:
        sendfile.stop_pumps()
        await verifier.stop()
        if lifecycle is not None:
            await lifecycle.stop()
        await app[JOBS].shutdown()
        await watch.stop()
        await outbox.drain(timeout=2.0)
        await outbox.close()
        await panel.close()
        await notify.close()
        if wings is not None:
            await wings.close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app
