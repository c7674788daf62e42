"""Typed keys of the objects the aiohttp application holds."""

from __future__ import annotations

from aiohttp import web

from wingsbak.config import Config
from wingsbak.events import EventBus
from wingsbak.jobs import JobManager
from wingsbak.panel import Outbox, PanelClient
from wingsbak.storage.local import LocalStorage
from wingsbak.tokens import UsedTokens
from wingsbak.wings.client import WingsClient

CONFIG = web.AppKey("config", Config)
JOBS = web.AppKey("jobs", JobManager)
STORAGE = web.AppKey("storage", LocalStorage)
EVENTS = web.AppKey("events", EventBus)
PANEL = web.AppKey("panel", PanelClient)
OUTBOX = web.AppKey("outbox", Outbox)
USED_TOKENS = web.AppKey("used_tokens", UsedTokens)
WINGS = web.AppKey("wings", WingsClient)  # only in front of Wings (api.upstream)
