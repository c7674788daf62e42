"""Which Wings wingsbak stands in front of: Pelican's or Pterodactyl's.

The two name their local backups differently and treat them differently when a server is
deleted or transferred (see :mod:`wingsbak.storage.backupdir` and :mod:`wingsbak.wings.lifecycle`),
so wingsbak writes and cleans up as the Wings behind it does.

Pelican Wings sets ``User-Agent: Pelican Wings/v<version> (id:<token id>)`` on every answer of
the routes behind its bearer check, 401 and 403 included (pelican-dev/wings
``router/middleware/middleware.go`` RequireAuthorization, installed on every ``/api/...`` route
but the websocket and ``POST /api/transfers``, and on unknown routes). It never does on the
websocket, ``/download/*``, ``/upload/file``, ``POST /api/transfers`` or an ``OPTIONS``
preflight (answered before the check). Pterodactyl Wings sends no ``User-Agent`` in its answers
(pterodactyl/wings sets one only on its own requests to the panel). So each answer of Wings to
a bearer-checked route says which it is: those the pass-through relays and those of
wingsbak's own calls. When a backup or a transfer needs it and nothing is known yet, wingsbak
asks (``GET /api/system`` with the bearer); the last flavour learnt is kept on disk for a start
while Wings is down. ``api.upstream_flavour`` forces one. Standalone, or while Wings has never
answered, wingsbak lays backups out as Pelican does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path

from wingsbak.config import AUTO, PELICAN, PTERODACTYL
from wingsbak.log import get_logger
from wingsbak.statefile import write_json_atomic
from wingsbak.wings.client import WingsClient, WingsError

log = get_logger(__name__)

STATE_NAME = ".wingsbak-wings-flavour.json"
PELICAN_AGENT = "Pelican Wings/"
# Methods whose answers pass Pelican's bearer check (an OPTIONS preflight is answered before).
_CHECKED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def told_by(method: str, path: str, headers: Mapping[str, str]) -> str | None:
    """What one answer of Wings says of its flavour; None when the route says nothing."""
    if method.upper() not in _CHECKED_METHODS or not path.startswith("/api/"):
        return None
    if path.endswith("/ws") or path.rstrip("/") == "/api/transfers":
        return None
    agent = headers.get("User-Agent", "")
    return PELICAN if agent.startswith(PELICAN_AGENT) else PTERODACTYL


class WingsFlavour:
    """The flavour of the fronted Wings: forced, learnt from its answers, or remembered."""

    def __init__(
        self, *, forced: str = AUTO, fronting: bool = True, state_dir: Path | None = None
    ) -> None:
        self.forced = forced if forced in (PELICAN, PTERODACTYL) else None
        self.fronting = fronting
        self.state_file = state_dir / STATE_NAME if state_dir is not None else None
        self.learnt: str | None = None
        self.remembered: str | None = None
        self.wings: WingsClient | None = None
        self._saves: set[asyncio.Task[None]] = set()
        self._save_lock = asyncio.Lock()

    def attach(self, wings: WingsClient) -> None:
        """Learn from every answer of this Wings, and ask it when nothing is known."""
        self.wings = wings
        wings.on_answer = self.observe

    @property
    def known(self) -> str | None:
        """The flavour as far as wingsbak can tell (None: not yet)."""
        if not self.fronting:
            return None
        return self.forced or self.learnt or self.remembered

    def layout(self) -> str:
        """How new local backups are laid out now: the fronted Wings' own way; Pelican's
        (a folder per server) standalone or while the Wings behind is not known."""
        return self.known or PELICAN

    def load(self) -> None:
        """Blocking: the flavour learnt by an earlier run."""
        if self.state_file is None:
            return
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("wings_flavour_state_unreadable", path=str(self.state_file), error=str(exc))
            return
        value = data.get("flavour") if isinstance(data, dict) else None
        if value in (PELICAN, PTERODACTYL):
            self.remembered = value

    def observe(self, method: str, path: str, headers: Mapping[str, str]) -> None:
        """An answer of Wings (on the event loop)."""
        told = told_by(method, path, headers)
        if told is None or told == self.learnt:
            return
        previous, self.learnt = self.known, told
        if self.forced is not None:
            if told != self.forced:
                log.warning("wings_flavour_differs_from_forced", forced=self.forced, seen=told)
            return
        if told != previous:
            log.info("wings_flavour_learnt", flavour=told, previous=previous, path=path)
        self._save(told)

    def _save(self, flavour: str) -> None:
        if self.state_file is None or flavour == self.remembered:
            return
        self.remembered = flavour
        path = self.state_file

        async def save() -> None:
            async with self._save_lock:  # the latest flavour is written last
                try:
                    await asyncio.to_thread(write_json_atomic, path, {"flavour": self.remembered})
                except OSError as exc:  # costs only the guess at a start while Wings is down
                    log.warning("wings_flavour_state_not_saved", error=str(exc))

        with contextlib.suppress(RuntimeError):  # no running loop: nothing to keep it on
            task = asyncio.get_running_loop().create_task(save())
            self._saves.add(task)
            task.add_done_callback(self._saves.discard)

    async def ask(self) -> str | None:
        """Ask Wings once (its answer is observed on the way); the flavour known after."""
        if self.wings is None:
            return self.known
        try:
            await self.wings.ping()
        except WingsError as exc:
            log.warning("wings_flavour_not_asked", error=str(exc))
        return self.known

    async def for_new_backup(self) -> str:
        """The layout of a backup about to be written: asks Wings when nothing is known yet,
        and says so in the log when Wings does not answer either."""
        if self.fronting and self.known is None:
            await self.ask()
            if self.known is None:
                log.warning("wings_flavour_unknown", layout=PELICAN)
        return self.layout()
