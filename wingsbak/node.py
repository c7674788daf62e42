"""The node's objects, built once: the panel client and its outbox, the Wings client, the
stores, the job manager, the watchers and the verify schedule. The HTTP application routes
to them (:func:`wingsbak.http.app.create_app`); the daemon starts and stops them.

What runs a job (:mod:`wingsbak.jobs`) is handed what it needs from Wings here (the quiesce,
the stop before a restore), so that it never imports :mod:`wingsbak.wings`.
"""

from __future__ import annotations

import asyncio

from wingsbak.browse.catalog import Catalog
from wingsbak.browse.restore import RECORD, PendingTemps, recover_left
from wingsbak.config import Config
from wingsbak.events import EventBus
from wingsbak.freespace import FreeSpace
from wingsbak.jobs import JobManager
from wingsbak.metrics import Metrics
from wingsbak.notify import WebhookClient
from wingsbak.panel import Outbox, PanelClient
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.storage.select import Stores
from wingsbak.tokens import UsedTokens
from wingsbak.verify.schedule import Verifier
from wingsbak.watch import Watch
from wingsbak.wings.client import WingsClient
from wingsbak.wings.flavour import WingsFlavour
from wingsbak.wings.identity import NodeIdentity
from wingsbak.wings.lifecycle import ServerLifecycle
from wingsbak.wings.quiesce import Quiesce


class Node:
    def __init__(self, config: Config, identity: NodeIdentity | None = None) -> None:
        """``identity``: the node's live identity, made by the daemon before it listens (it
        may change ``config`` from wingsbak's state); one of its own otherwise."""
        self.config = config
        b = config.system.backups
        # Which Wings is in front of: local backups are named as it names its own.
        self.flavour = WingsFlavour(
            forced=config.api.upstream_flavour,
            fronting=bool(config.upstream),
            state_dir=config.backup_dir,
        )
        self.directory = BackupDirectory(config.backup_dir, self.flavour)
        self.panel = PanelClient(config.remote, config.token_id, config.token)
        self.notify = WebhookClient(b.notify_url)
        self.outbox = Outbox(
            self.panel,
            config.backup_dir,
            retry_initial=b.report_retry_initial,
            retry_max=b.report_retry_max,
            notify=self.notify,
        )
        self.events = EventBus()
        # In front of Wings (api.upstream): Wings' API for the pass-through and for the jobs.
        self.wings = (
            WingsClient(config.upstream, config.token, config.api.upstream_ca)
            if config.upstream
            else None
        )
        self.identity = identity or NodeIdentity(config)
        self.identity.attach(panel=self.panel, wings=self.wings)
        self.used_tokens = UsedTokens(config.backup_dir)
        self.metrics = Metrics()
        self.stores = Stores.from_config(
            config, self.directory, self.panel, on_uploaded=self.metrics.s3_uploaded_bytes.inc
        )
        self.jobs = JobManager(
            config,
            stores=self.stores,
            outbox=self.outbox,
            events=self.events,
            metrics=self.metrics,
            quiesce=Quiesce(config, self.wings, self.metrics),
            space=FreeSpace(config, self.directory, self.metrics),
            stop_server=self.wings.stop_and_wait if self.wings is not None else None,
        )
        # The backups' folder of the file manager, and its single-path restores' temporaries.
        self.catalog = Catalog(self.stores.all)
        self.browse_temps = PendingTemps(config.backup_dir / RECORD)
        self.watch = Watch(config, self.metrics, self.outbox)
        self.jobs.on_job_end = self.watch.job_end
        self.verifier = Verifier(config, self.jobs, self.watch, self.stores)
        self.lifecycle = (
            ServerLifecycle(
                config, self.jobs, self.wings, self.flavour, self.directory, self.stores
            )
            if self.wings is not None
            else None
        )
        if self.wings is not None:
            self.flavour.attach(self.wings)

    async def start(self) -> None:
        """What an earlier run left is taken up (reports, interrupted jobs, removals), then
        the stores' checks and the schedules start."""
        await asyncio.to_thread(self.used_tokens.load)
        await asyncio.to_thread(self.flavour.load)
        await self.outbox.load()
        await self.watch.start()
        await self.jobs.recover()
        await asyncio.to_thread(self.browse_temps.recover)
        await asyncio.to_thread(recover_left, self.config.backup_dir)
        self.stores.start()
        await self.verifier.start()
        if self.lifecycle is not None:
            await self.lifecycle.start()  # removals an earlier run left go on

    async def stop(self) -> None:
        """Running jobs finish within the grace period (the rest are reported failed); the
        reports left are sent for a moment, then every client is closed."""
        await self.verifier.stop()
        if self.lifecycle is not None:
            await self.lifecycle.stop()
        await self.jobs.shutdown()
        await self.watch.stop()
        await self.outbox.drain(timeout=2.0)
        await self.outbox.close()
        await self.panel.close()
        await self.notify.close()
        if self.wings is not None:
            await self.wings.close()
