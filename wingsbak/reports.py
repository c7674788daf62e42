"""The bodies of the panel's reports on a job (``POST /backups/<uuid>`` and
``POST /backups/<uuid>/restore``), built here only: by a job as it ends and by the start
after a crash."""

from __future__ import annotations

from typing import Any

from wingsbak.storage.base import Outcome


def backup_path(backup: str) -> str:
    return f"/backups/{backup}"


def restore_path(backup: str) -> str:
    return f"/backups/{backup}/restore"


def backup_report(outcome: Outcome) -> dict[str, Any]:
    """Wings' body (remote/types.go BackupRequest); ``parts`` only for the panel's bucket."""
    return {
        "checksum": outcome.checksum,
        "checksum_type": outcome.checksum_type,
        "size": outcome.size,
        "successful": outcome.successful,
        "parts": outcome.parts,
    }


def restore_report(successful: bool) -> dict[str, Any]:
    return {"successful": successful}
