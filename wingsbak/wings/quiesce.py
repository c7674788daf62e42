"""A running game's saving paused around its backup, for as short a time as the node allows.

In front of Wings, for a server Wings says is running:

1. The plan: the first of ``system.backups.quiesce`` whose patterns match the server's
   container image and startup invocation (Wings' ``GET /api/servers/{s}``, ``configuration``;
   never the egg, whose id differs on every panel), else the node-wide ``console_*`` keys.
2. The console socket is opened (:mod:`wingsbak.wings.console`) before the ``before`` commands go,
   so that the game's answer cannot be missed; then the wait for a line matching
   ``wait_for``, at most ``wait_timeout`` seconds, then ``settle`` seconds. A line that never
   comes costs the backup nothing, but its log line, its event and
   ``wingsbak_backups_maybe_inconsistent_total`` say it may be inconsistent.
3. Where the file system clones (:mod:`wingsbak.archive.clone`), the tree is cloned and the
   ``after`` commands go at once: the archive is made from the clone. Otherwise they go as
   soon as the archiver has read the last file (a pre-signed upload goes on after that), or
   when the backup fails, whichever comes first.

How long saving was paused is measured from the game's line (without one: from the
``before`` commands) to the ``after`` commands, that is the time the game waits on the backup, and
printed (``saving paused for N s``) in the backup's log line and its ``backup completed``
event, and observed in ``wingsbak_backup_saving_paused_seconds``. Wings unreachable costs the
commands (a log line), never the backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from wingsbak.archive.clone import CloneUnsupported, clone_tree, remove_clone, remove_clones
from wingsbak.archive.ratelimit import Cancelled
from wingsbak.archive.rules import IgnoreRules
from wingsbak.config import BackupsConfig, Config
from wingsbak.log import get_logger
from wingsbak.metrics import Metrics
from wingsbak.patterns import compile_pattern, matches
from wingsbak.storage.base import BackupSource
from wingsbak.wings.client import RUNNING, WingsClient, WingsError
from wingsbak.wings.console import (
    CANCEL_POLL,
    ConsoleUnavailable,
    ConsoleWatch,
    console_token,
    open_console,
)

log = get_logger(__name__)

# A backup made although the game never said it had saved: its log line, its event's
# "consistent": false and a metric say so (it did not fail, so it is not notified).
BACKUP_MAYBE_INCONSISTENT = "backup_maybe_inconsistent"

# restic reads the files itself, and would take a clone's new inodes for changed files.
CLONING_STORES = frozenset({"local", "s3", "presigned"})


@dataclass(slots=True, frozen=True)
class Plan:
    rule: str  # the matching rule's name; "" for the node-wide keys
    before: list[str]
    wait_for: str
    wait_timeout: float
    settle: float
    after: list[str]


def choose_plan(b: BackupsConfig, details: dict[str, Any] | None) -> Plan:
    """The first rule matching the server's image and invocation, else the node-wide keys."""
    config = details.get("configuration") if isinstance(details, dict) else None
    if isinstance(config, dict):
        container = config.get("container")
        image = container.get("image") if isinstance(container, dict) else None
        invocation = config.get("invocation")
        texts = {
            "image": image if isinstance(image, str) else "",
            "invocation": invocation if isinstance(invocation, str) else "",
        }
        for i, rule in enumerate(b.quiesce):
            given = (("image", rule.image), ("invocation", rule.invocation))
            if all(matches(compile_pattern(p), texts[k]) for k, p in given if p):
                return Plan(
                    rule.name or f"quiesce[{i}]",
                    list(rule.before),
                    rule.wait_for,
                    rule.wait_timeout or b.console_wait_timeout,
                    rule.settle,
                    list(rule.after),
                )
    return Plan(
        "",
        list(b.console_before),
        b.console_wait_for,
        b.console_wait_timeout,
        b.console_settle,
        list(b.console_after),
    )


@dataclass(slots=True)
class Paused:
    """What the backup reads (the server root, or its clone) and what its log line and
    event say about the pause (``notes``, filled as it goes)."""

    source: BackupSource
    notes: dict[str, Any]


class Quiesce:
    def __init__(
        self,
        config: Config,
        wings: WingsClient | None,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.wings = wings
        self._recovery: asyncio.Task[None] | None = None
        r = metrics.registry
        self.maybe_inconsistent = Counter(
            "wingsbak_backups_maybe_inconsistent",
            "Backups of running servers made without the game's console line (wait_for)",
            ["server"],
            registry=r,
        )
        self.paused = Histogram(
            "wingsbak_backup_saving_paused_seconds",
            "How long a running game's saving was paused for its backup",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300, 1800, 7200),
            registry=r,
        )

    @contextlib.asynccontextmanager
    async def around(
        self, source: BackupSource, store: str, notes: dict[str, Any]
    ) -> AsyncIterator[Paused]:
        """Pause the server's saving (when a plan says how) and yield what to archive;
        saving is resumed, and a clone removed, however the backup ends."""
        paused = Paused(source, notes)
        b = self.config.system.backups
        if self.wings is None or not (
            b.quiesce or b.console_before or b.console_after or b.console_settle
        ):
            yield paused
            return
        details = await self._details(source.server)
        plan = choose_plan(b, details)
        if not (plan.before or plan.after or plan.settle):
            yield paused
            return
        pause = _Pause(self, self.wings, plan, paused)
        try:
            running = details is not None and details.get("state") == RUNNING
            if running and (plan.before or plan.settle):
                await pause.stop_saving()
            await pause.snapshot(store)
            yield paused
        finally:
            # Shielded: a cancelled backup (a shutdown) must still turn saving back on.
            await asyncio.shield(asyncio.ensure_future(pause.finish()))

    async def recover(self, journal: dict[str, dict[str, Any]]) -> None:
        """At start, after a run that died (no backup is running yet): its clones are removed,
        and the servers of the backups it was making get their after commands (in the
        background: Wings may still be starting), since their saving may still be paused."""
        removed = await asyncio.to_thread(remove_clones, self.config.data_dir)
        if removed:
            log.warning("interrupted_backup_clones_removed", clones=removed)
        backups = [e for e in journal.values() if e.get("kind") == "backup"]
        servers = {str(e.get("server") or "") for e in backups} - {""}
        if self.wings is not None and servers:
            self._recovery = asyncio.create_task(self._resume_saving(sorted(servers)))

    async def _resume_saving(self, servers: list[str]) -> None:
        assert self.wings is not None
        for server in servers:
            details = await self._details(server)
            plan = choose_plan(self.config.system.backups, details)
            running = details is not None and details.get("state") == RUNNING
            if plan.after and running:
                await _send(self.wings, server, plan.after, "console_after")

    async def _details(self, server: str) -> dict[str, Any] | None:
        assert self.wings is not None
        try:
            return await self.wings.server_details(server)
        except WingsError as exc:
            log.warning("console_commands_not_sent", server=server, key="details", error=str(exc))
            return None


class _Pause:
    """One backup's pause: the commands, the wait, the clone and the resume."""

    def __init__(self, owner: Quiesce, wings: WingsClient, plan: Plan, paused: Paused) -> None:
        self.owner = owner
        self.wings = wings
        self.plan = plan
        self.paused = paused
        self.server = paused.source.server
        self.backup = paused.source.backup
        self.since: float | None = None  # saving paused: the game's line, else the before
        self.clone: Path | None = None
        self.resume: asyncio.Task[None] | None = None

    @property
    def notes(self) -> dict[str, Any]:
        return self.paused.notes

    async def stop_saving(self) -> None:
        plan = self.plan
        if plan.rule:
            self.notes["quiesce_rule"] = plan.rule
        if not plan.before:  # a game without a save command: the settle time only
            await self._settle()
            return
        if not plan.wait_for:
            started = time.monotonic()
            if await self._send(plan.before, "console_before"):
                self.since = started
                await self._settle()
            return
        async with contextlib.AsyncExitStack() as stack:
            watch: ConsoleWatch | None = None
            try:
                watch = await stack.enter_async_context(self._console(plan.wait_timeout))
                watch.arm()
                why = f"no console line matching {plan.wait_for!r} within {plan.wait_timeout:g} s"
            except ConsoleUnavailable as exc:
                why = f"the console could not be read: {exc}"
                log.warning("console_wait_unavailable", server=self.server, error=str(exc))
            started = time.monotonic()
            if not await self._send(plan.before, "console_before"):
                return
            self.since = started
            pattern = compile_pattern(plan.wait_for)
            cancel = self.paused.source.cancel
            if watch is not None and await watch.wait_for(pattern, plan.wait_timeout, cancel):
                self.since = time.monotonic()  # the game has saved: from here it waits on us
                log.info(
                    "console_line_seen",
                    server=self.server,
                    backup=self.backup,
                    seconds=round(time.monotonic() - started, 3),
                )
            else:
                self._maybe_inconsistent(why)
        await self._settle()

    async def _settle(self) -> None:
        cancel = self.paused.source.cancel
        deadline = time.monotonic() + self.plan.settle
        while (left := deadline - time.monotonic()) > 0:
            if cancel.is_set():
                raise Cancelled("backup cancelled")
            await asyncio.sleep(min(left, CANCEL_POLL))

    def _console(self, wait: float) -> contextlib.AbstractAsyncContextManager[ConsoleWatch]:
        cfg = self.owner.config
        token = console_token(cfg.token, self.server, cfg.remote, wait + self.plan.settle)
        url = self.wings.url(f"/api/servers/{self.server}/ws")
        return open_console(self.wings.session, url, self.server, token=token, origin=cfg.remote)

    def _maybe_inconsistent(self, why: str) -> None:
        self.notes["consistent"] = False
        self.notes["inconsistent_reason"] = why
        log.warning(BACKUP_MAYBE_INCONSISTENT, server=self.server, backup=self.backup, reason=why)
        self.owner.maybe_inconsistent.labels(self.server).inc()

    async def snapshot(self, store: str) -> None:
        """Clone the tree while saving is paused, then resume; else resume when read."""
        source = self.paused.source
        b = self.owner.config.system.backups
        if self.since is not None and b.clone_files and store in CLONING_STORES:
            self.clone = await self._clone(source)
            if self.clone is not None:
                self.paused.source = dataclasses.replace(source, root=self.clone)
                self.notes["cloned"] = True
                self._start_resume()
                await asyncio.shield(self.resume)  # type: ignore[arg-type]
                return
        loop = asyncio.get_running_loop()

        def read_end() -> None:  # a job thread: the last file has been read
            with contextlib.suppress(RuntimeError):  # the loop closed while stopping
                loop.call_soon_threadsafe(self._start_resume)

        options = dataclasses.replace(source.options, on_read_end=read_end)
        self.paused.source = dataclasses.replace(source, options=options)

    async def _clone(self, source: BackupSource) -> Path | None:
        def make() -> Path:
            rules = IgnoreRules.for_server(source.root, source.ignore)
            data = self.owner.config.data_dir
            return clone_tree(source.root, data, source.backup, rules, source.cancel)

        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            tree = await loop.run_in_executor(source.executor, make)
        except Cancelled:
            raise
        except CloneUnsupported as exc:
            log.info("clone_unavailable", server=self.server, reason=exc.strerror or str(exc))
            return None
        except Exception as exc:
            error = getattr(exc, "strerror", None) or str(exc)
            log.warning("clone_failed", server=self.server, backup=self.backup, error=error)
            return None
        seconds = round(time.monotonic() - started, 3)
        log.info("clone_made", server=self.server, backup=self.backup, seconds=seconds)
        return tree

    def _start_resume(self) -> None:
        if self.resume is None:
            self.resume = asyncio.ensure_future(self._resume())

    async def _resume(self) -> None:
        if self.plan.after:
            await self._send_if_running(self.plan.after)
        if self.since is None:
            return
        seconds = round(time.monotonic() - self.since, 3)
        self.owner.paused.observe(seconds)
        self.notes["saving_paused_seconds"] = seconds
        self.notes["quiesce"] = f"saving paused for {seconds:g} s"
        if self.notes.get("consistent") is False:
            self.notes["quiesce"] += f"; may be inconsistent: {self.notes['inconsistent_reason']}"
        log.info(
            "saving_resumed",
            server=self.server,
            backup=self.backup,
            message=self.notes["quiesce"],
            cloned=bool(self.clone),
        )

    async def finish(self) -> None:
        self._start_resume()
        assert self.resume is not None
        await self.resume
        if self.clone is not None:
            try:
                await asyncio.to_thread(remove_clone, self.clone)
            except OSError as exc:  # the next start removes it
                log.error("clone_not_removed", path=str(self.clone), error=str(exc))

    async def _send(self, commands: list[str], key: str) -> bool:
        return await _send(self.wings, self.server, commands, key)

    async def _send_if_running(self, commands: list[str]) -> None:
        try:
            if await self.wings.server_state(self.server) != RUNNING:
                return
        except WingsError as exc:
            log.warning(
                "console_commands_not_sent", server=self.server, key="console_after", error=str(exc)
            )
            return
        await self._send(commands, "console_after")


async def _send(wings: WingsClient, server: str, commands: list[str], key: str) -> bool:
    try:
        await wings.send_commands(server, commands)
    except WingsError as exc:
        log.warning("console_commands_not_sent", server=server, key=key, error=str(exc))
        return False
    log.info("console_commands_sent", server=server, key=key, commands=len(commands))
    return True
