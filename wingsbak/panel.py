"""The client of the panel's remote API, with a durable outbox for reports.

Every report (backup finished, restore finished) is first written to a small JSON file under
the backup directory, then delivered with retries: 5xx, 429 and connection errors back off
exponentially with jitter and try again, forever; a 4xx other than 429 is final (the panel
refuses it, e.g. a backup already marked complete) and is logged loudly, never retried. A
report still in the outbox when the daemon stops is delivered after it starts again.

The same outbox carries the operator's notifications (:mod:`wingsbak.notify`): an item's
``target`` says which client delivers it, and each item is delivered on its own, so a panel
that is down holds up no notification and a notify URL that is down no report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from wingsbak.errors import ServiceFailure
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic

log = get_logger(__name__)

ACCEPT = "application/vnd.pterodactyl.v1+json"
OUTBOX_NAME = ".wingsbak-outbox.json"
PANEL = "panel"
NOTIFY = "notify"
# Log event prefixes per target (the panel's names are the ones operators already know).
_EVENTS = {PANEL: ("panel_report", "panel_refused_report"), NOTIFY: ("notify", "notify_refused")}


class Client(Protocol):
    @property
    def configured(self) -> bool: ...

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any: ...


class PanelError(ServiceFailure):
    """The panel refused a request or could not be reached."""


@dataclass(slots=True)
class Report:
    method: str
    path: str  # below <remote>/api/remote
    body: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0
    target: str = PANEL


class PanelClient:
    def __init__(
        self,
        remote: str,
        token_id: str,
        token: str,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.base = remote.rstrip("/") + "/api/remote" if remote else ""
        self._auth = f"Bearer {token_id}.{token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        return bool(self.base)

    def set_identity(self, remote: str, token_id: str, token: str) -> None:
        """A new panel address or node token (wingsbak.wings.identity): every request from
        now on, reports already in the outbox included, goes there with it."""
        self.base = remote.rstrip("/") + "/api/remote" if remote else ""
        self._auth = f"Bearer {token_id}.{token}"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": self._auth,
            "Accept": ACCEPT,
            "Content-Type": "application/json",
            "User-Agent": "wingsbak",
        }

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One attempt. Returns the decoded JSON (or None); raises :class:`PanelStatus` for an
        HTTP error answer and ``aiohttp.ClientError``/``TimeoutError`` for transport errors."""
        session = await self.session()
        async with session.request(
            method, self.base + path, json=body, headers=self._headers()
        ) as resp:
            # Decoded leniently: a panel (or a proxy before it) answering in another charset
            # must not make the answer unreadable, let alone kill a report's delivery.
            text = (await resp.read()).decode("utf-8", errors="replace")
            if resp.status >= 400:
                raise PanelStatus(resp.status, text[:300])
            if not text:
                return None
            try:
                return json.loads(text)
            except ValueError:
                return None

    async def get_part_urls(
        self, backup_uuid: str, size: int, attempts: int = 6, backoff: float = 1.0
    ) -> tuple[list[str], int]:
        """The stock panel's S3 flow: pre-signed part URLs for an archive of ``size`` bytes.

        Asked once the whole archive is written, so a panel that is briefly unavailable (a
        5xx, a 429, a refused connection) is asked again with a growing pause (about 30 s in
        all, as Wings does) before the backup is given up."""
        path = f"/backups/{backup_uuid}?size={size}"
        for attempt in range(1, attempts + 1):
            try:
                data = await self.request("GET", path)
                break
            except PanelStatus as exc:
                if not exc.retryable or attempt == attempts:
                    raise
                error = f"HTTP {exc.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt == attempts:
                    raise
                error = str(exc) or type(exc).__name__
            delay = backoff * 2 ** (attempt - 1)
            log.warning("panel_part_urls_retry", attempt=attempt, error=error, retry_in=delay)
            await asyncio.sleep(delay)
        if not isinstance(data, dict) or not isinstance(data.get("parts"), list):
            raise PanelError("the panel's answer holds no part URLs")
        return [str(u) for u in data["parts"]], int(data.get("part_size") or 0)


class PanelStatus(PanelError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"panel answered HTTP {status}")
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status == 429


class Outbox:
    """Reports not yet delivered, kept in a file so that a restart delivers them."""

    def __init__(
        self,
        client: PanelClient,
        directory: str | os.PathLike[str],
        *,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        notify: Client | None = None,
    ) -> None:
        self.client = client
        self.clients: dict[str, Client] = {PANEL: client}
        if notify is not None:
            self.clients[NOTIFY] = notify
        self.path = Path(directory) / OUTBOX_NAME
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._pending: dict[str, Report] = {}
        self._loaded_paths: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self.delivered = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._pending)

    def left_by_last_run(self, path: str) -> bool:
        """Whether the outbox file the last run left held a report to ``path`` (delivered by
        now or not): recovery must not add a second one."""
        return path in self._loaded_paths

    async def load(self) -> None:
        """Read the file left by an earlier run and start delivering what it holds (a report
        for a panel no longer configured stays in the file, undelivered; a notification for
        a notify URL no longer configured is dropped)."""
        raw = await asyncio.to_thread(self._read_file)
        for item in raw:
            try:
                report = Report(item["method"], item["path"], item["body"], item["id"])
                report.target = str(item.get("target", PANEL))
            except (KeyError, TypeError, AttributeError):
                log.error("outbox_entry_unreadable", entry=str(item)[:200])
                continue
            if report.target != PANEL and not self._configured(report.target):
                log.warning("notify_dropped", reason="no notify_url configured")
                continue
            self._pending[report.id] = report
            if report.target == PANEL and self.client.configured:
                self._loaded_paths.add(report.path)
        if self._pending:
            log.info("outbox_loaded", reports=len(self._pending))
        for report in list(self._pending.values()):
            if self._configured(report.target):
                self._start(report)

    def _configured(self, target: str) -> bool:
        client = self.clients.get(target)
        return client is not None and client.configured

    def _read_file(self) -> list[Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("outbox_unreadable", path=str(self.path), error=str(exc))
            return []
        return data if isinstance(data, list) else []

    def _write_file(self, items: list[dict[str, Any]]) -> None:
        write_json_atomic(self.path, items)

    async def _persist(self) -> None:
        """Rewrite the file; a failure (a full disk) is logged, never raised: the reports are
        still delivered from memory, only their survival of a restart is lost meanwhile."""
        items = [
            {"id": r.id, "method": r.method, "path": r.path, "body": r.body}
            | ({"target": r.target} if r.target != PANEL else {})
            for r in self._pending.values()
        ]
        async with self._lock:
            try:
                await asyncio.to_thread(self._write_file, items)
            except OSError as exc:
                log.error(
                    "outbox_not_saved",
                    path=str(self.path),
                    error=exc.strerror or str(exc),
                    pending=len(items),
                )

    async def send(
        self, method: str, path: str, body: dict[str, Any], target: str = PANEL
    ) -> None:
        """Queue a report (with ``target`` NOTIFY: a notification) durably and start
        delivering it."""
        if not self._configured(target):
            if target == PANEL:
                log.info(
                    "panel_report_not_sent", reason="no panel configured", path=path, body=body
                )
            return
        report = Report(method, path, body, target=target)
        self._pending[report.id] = report
        await self._persist()
        self._start(report)

    def _start(self, report: Report) -> None:
        task = asyncio.ensure_future(self._deliver(report))
        self._tasks[report.id] = task
        task.add_done_callback(lambda _t, rid=report.id: self._tasks.pop(rid, None))

    async def _deliver(self, report: Report) -> None:
        delay = self.retry_initial
        client = self.clients[report.target]
        event, refused = _EVENTS.get(report.target, _EVENTS[PANEL])
        while True:
            report.attempts += 1
            try:
                await client.request(report.method, report.path, report.body)
            except PanelStatus as exc:
                if not exc.retryable:
                    self.refused += 1
                    log.error(
                        refused,
                        path=report.path,
                        status=exc.status,
                        answer=exc.body,
                        note="not retried; the archive (if any) is kept",
                    )
                    break
                log.warning(
                    f"{event}_retry",
                    path=report.path,
                    status=exc.status,
                    attempt=report.attempts,
                    retry_in=round(delay, 2),
                )
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning(
                    f"{event}_retry",
                    path=report.path,
                    error=str(exc) or type(exc).__name__,
                    attempt=report.attempts,
                    retry_in=round(delay, 2),
                )
            else:
                self.delivered += 1
                log.info(f"{event}_delivered", path=report.path, attempts=report.attempts)
                break
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(self.retry_max, delay * 2)
        self._pending.pop(report.id, None)
        # Shielded: once delivered, the outbox file must forget it even if we are stopping.
        await asyncio.shield(self._persist())

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every pending delivery; True when all are done."""
        tasks = list(self._tasks.values())
        if not tasks:
            return True
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    async def close(self) -> None:
        """Stop delivering; whatever is pending stays in the file for the next start."""
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
