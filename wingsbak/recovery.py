"""The start after a run that died mid-job: its stagings finished, its clones removed, and
the panel told once how each job it was running ended."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from wingsbak.archive.extract import Recovered, recover_stagings
from wingsbak.errors import describe
from wingsbak.jobbase import JobBase
from wingsbak.log import get_logger
from wingsbak.reports import backup_path, backup_report, restore_path, restore_report
from wingsbak.storage.base import Outcome
from wingsbak.watch import INTERRUPTED, JobEnd

log = get_logger(__name__)


class Recovery(JobBase):
    async def recover(self) -> None:
        """Clean up after an earlier run that died mid-job and tell the panel how they ended:
        backups failed unless committed, restores failed unless their swap was committed."""
        leftovers = await asyncio.to_thread(self.journal.load)
        await self.quiesce.recover(leftovers)  # clones removed, saving turned back on
        died: dict[str, set[str]] = {}  # server -> restores the journal says died there
        for key, entry in leftovers.items():
            if entry.get("kind") == "restore" and entry.get("server"):
                died.setdefault(str(entry["server"]), set()).add(key)
        # Every server root's stagings, those no journal entry covers too (a journal that
        # could not be written, a `wingsbak restore` killed in a server's directory).
        stagings = await asyncio.to_thread(self._recover_stagings, died)
        for key, entry in leftovers.items():
            server = str(entry.get("server", ""))
            kind = entry.get("kind")
            log.warning("interrupted_job_found", kind=kind, server=server, backup=key)
            path = backup_path(key) if kind == "backup" else restore_path(key)
            if kind == "restore":
                found = stagings.pop((server, key), None)
                if not await self._recover_restore(key, entry, found, path):
                    continue  # its staging is still there: the entry stays for the next start
            elif self.outbox.left_by_last_run(path):
                # It finished and its report was queued just before the daemon died.
                log.info("interrupted_job_already_reported", kind=kind, backup=key)
            elif kind == "backup" and (
                done := await asyncio.to_thread(self._recover_backup, server, entry, key)
            ):
                # It died after the archive and its sidecar were committed, before the report.
                complete = Outcome(True, done.checksum, done.checksum_type, done.size)
                await self.outbox.send("POST", path, backup_report(complete))
                log.info("interrupted_backup_found_complete", backup=key, size=done.size)
                await self.on_job_end(JobEnd("backup", server, key, True))
            elif kind == "backup":
                failed = Outcome(False, checksum_type=self.config.system.backups.checksum)
                await self.outbox.send("POST", path, backup_report(failed))
                log.info("interrupted_backup_reported", backup=key)
                await self.on_job_end(JobEnd("backup", server, key, False, INTERRUPTED))
            await asyncio.to_thread(self.journal.forget, key)
        for (server, label), found in stagings.items():
            _log_staging("orphan_restore_staging", server, label, found)

    async def _recover_restore(
        self, key: str, entry: dict[str, Any], found: Recovered | None, path: str
    ) -> bool:
        """Report a restore the daemon died in, once: successful when its swap had been
        committed (the server's files are the backup's, whole), failed otherwise (they are
        the old ones, whole). False while its staging could not be finished."""
        server = str(entry.get("server", ""))
        committed = bool(entry.get("committed")) or (found is not None and found.committed)
        if found is not None:
            _log_staging("interrupted_restore_staging", server, key, found)
        if entry.get("reported") or self.outbox.left_by_last_run(path):
            log.info("interrupted_job_already_reported", kind="restore", backup=key)
        else:
            await self.outbox.send("POST", path, restore_report(committed))
            log.info("interrupted_restore_reported", backup=key, successful=committed)
            error = "" if committed else INTERRUPTED
            await self.on_job_end(JobEnd("restore", server, key, committed, error))
        if found is not None and found.error:
            await self._journal_accepted(key, reported=True)
            return False
        return True

    def _recover_stagings(self, died: dict[str, set[str]]) -> dict[tuple[str, str], Recovered]:
        """Worker thread: finish the stagings of every server root under ``system.data``."""
        out: dict[tuple[str, str], Recovered] = {}
        try:
            with os.scandir(self.config.data_dir) as it:
                servers = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            log.error("restore_stagings_not_scanned", error=describe(exc))
            return out
        for server in servers:
            for found in recover_stagings(self.server_root(server), died.get(server, ())):
                out[(server, found.label)] = found
        return out

    def _recover_backup(self, server: str, entry: dict[str, Any], backup: str) -> Outcome | None:
        """Worker thread: the outcome of a backup the daemon died in, from its store; its
        leftovers are removed there."""
        name = entry.get("store")
        if not isinstance(name, str):
            name = self.stores.of_earlier_journal(str(entry.get("adapter", "")))
        store = self.stores.by_name(name)
        if store is None:
            log.error("interrupted_backup_store_gone", backup=backup, store=name)
            return None
        try:
            return store.recover(server, backup, entry)
        except Exception as exc:
            log.error("interrupted_backup_not_cleaned", backup=backup, store=name, error=str(exc))
            return None



def _log_staging(event: str, server: str, label: str, found: Recovered) -> None:
    """``<event>_finished`` (rolled forward or undone) or ``<event>_not_finished``."""
    if found.error:
        log.error(
            f"{event}_not_finished",
            server=server,
            label=label,
            staging=found.name,
            error=found.error,
        )
    else:
        how = "rolled_forward" if found.committed else "undone"
        log.warning(f"{event}_finished", server=server, label=label, staging=found.name, how=how)
