"""Typed keys of the objects the aiohttp application holds, read by wingsbak's own routes
(wingsbak.http) and by Wings' (wingsbak.wings). The Wings client's key and the node
identity's are their modules' own (wingsbak.wings.client, wingsbak.wings.identity)."""

from __future__ import annotations

from aiohttp import web

from wingsbak.browse.catalog import Catalog
from wingsbak.browse.restore import PendingTemps
from wingsbak.config import Config
from wingsbak.events import EventBus
from wingsbak.jobs import JobManager
from wingsbak.metrics import Metrics
from wingsbak.panel import Outbox, PanelClient
from wingsbak.storage.backupdir import BackupDirectory
from wingsbak.storage.select import Stores
from wingsbak.tokens import UsedTokens

CONFIG = web.AppKey("config", Config)
JOBS = web.AppKey("jobs", JobManager)
STORAGE = web.AppKey("storage", BackupDirectory)
STORES = web.AppKey("stores", Stores)
EVENTS = web.AppKey("events", EventBus)
METRICS = web.AppKey("metrics", Metrics)
PANEL = web.AppKey("panel", PanelClient)
OUTBOX = web.AppKey("outbox", Outbox)
USED_TOKENS = web.AppKey("used_tokens", UsedTokens)
CATALOG = web.AppKey("catalog", Catalog)
BROWSE_TEMPS = web.AppKey("browse_temps", PendingTemps)
