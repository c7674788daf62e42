"""The aiohttp application: wiring only; each route group lives in its own module."""

from __future__ import annotations

from aiohttp import web

from wingsbak.appkeys import (
    BROWSE_TEMPS,
    CATALOG,
    CONFIG,
    EVENTS,
    JOBS,
    METRICS,
    OUTBOX,
    PANEL,
    STORAGE,
    STORES,
    USED_TOKENS,
)
from wingsbak.http import (
    backups,
    download,
    events_ws,
    restore,
    sendfile,
    system,
)
from wingsbak.http.middleware import errors_middleware, make_auth_middleware, make_identify
from wingsbak.node import Node
from wingsbak.wings import browse, config_push, hold, proxy, relay
from wingsbak.wings import lifecycle as server_lifecycle
from wingsbak.wings.client import WINGS
from wingsbak.wings.identity import IDENTITY


def create_app(node: Node) -> web.Application:
    """The routes to the node's objects; the node starts and stops with the application."""
    config = node.config
    app = web.Application(
        middlewares=[errors_middleware, make_auth_middleware(lambda: config.token)],
        client_max_size=config.api.max_body_bytes,
        # In front of Wings, request bodies stream through in larger reads (see wings/proxy.py) and
        # as sent: a gzip-encoded upload is Wings' to decode.
        handler_args={"read_bufsize": proxy.BUFFER, "auto_decompress": False}
        if config.upstream
        else None,
    )
    app[IDENTITY] = node.identity
    app[CONFIG] = config
    app[STORAGE] = node.directory
    app[STORES] = node.stores
    app[PANEL] = node.panel
    app[OUTBOX] = node.outbox
    app[EVENTS] = node.events
    app[METRICS] = node.metrics
    app[USED_TOKENS] = node.used_tokens
    app[JOBS] = node.jobs
    app[CATALOG] = node.catalog
    app[BROWSE_TEMPS] = node.browse_temps
    app.on_response_prepare.append(make_identify(lambda: app[CONFIG].token_id))
    app.add_routes(backups.routes)
    app.add_routes(download.routes)
    app.add_routes(restore.routes)
    config_push.add_routes(app)
    if node.wings is None:
        app.add_routes(system.routes)
        app.add_routes(events_ws.routes)
    else:
        app[WINGS] = node.wings
        # GET /api/system is Wings' (the panel's node page reads Wings' fields from it).
        app.add_routes([r for r in system.routes if getattr(r, "path", "") != "/api/system"])
        relay.add_routes(app)
        if node.lifecycle is not None:
            server_lifecycle.add_routes(app, node.lifecycle)
        hold.add_routes(app)  # before the pass-through's catch-all
        browse.add_routes(app)  # the backups' folder of the file manager, before it too
        proxy.add_routes(app)

    async def startup(_app: web.Application) -> None:
        await node.start()

    async def shutdown(_app: web.Application) -> None:
        sendfile.stop_pumps()
        await node.stop()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app
