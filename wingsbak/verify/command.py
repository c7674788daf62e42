"""``wingsbak verify [BACKUP]``: the schedule's checks, on demand, one line per backup.

BACKUP is the path of any backup archive (checked against its sidecar when it has one), or a
backup uuid, looked up in the stores the configuration names; without it, every backup of
the node (a restic repository: ``restic check --read-data``, which locks it exclusively).

Exit status: 0 every backup checked is sound; 1 at least one is corrupt; 2 bad arguments or
no such backup; 3 some could not be checked (an unreachable bucket, a busy repository) and
none was found corrupt.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wingsbak.archive.verify import ArchiveCorrupt, VerifyResult, verify_file
from wingsbak.uuids import UUID_PATTERN

# Checking one file needs none of the stores (nor boto3's import time).
if TYPE_CHECKING:
    from wingsbak.config import Config
    from wingsbak.storage.bucket import NodeBucket
    from wingsbak.storage.restic import ResticStore
    from wingsbak.verify.stored import StoredBackup

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_USAGE = 2
EXIT_UNCHECKED = 3

Print = Callable[[str], None]
_UUID = re.compile(rf"^{UUID_PATTERN}$")


@dataclass(slots=True)
class Tally:
    out: Print
    sound: int = 0
    corrupt: int = 0
    unchecked: int = 0

    def run(self, store: str, name: str, check: Callable[[], str]) -> None:
        """One backup: its line, and the count it goes into."""
        started = time.monotonic()
        try:
            detail = check()
        except ArchiveCorrupt as exc:
            self.corrupt += 1
            self.out(f"CORRUPT    {store:<6} {name}: {exc}")
        except Exception as exc:  # unreadable, unreachable, locked: nothing known
            self.unchecked += 1
            self.out(f"UNCHECKED  {store:<6} {name}: {exc}")
        else:
            self.sound += 1
            seconds = time.monotonic() - started
            self.out(f"ok         {store:<6} {name}: {detail} ({seconds:.1f} s)")

    def exit_status(self) -> int:
        total = self.sound + self.corrupt + self.unchecked
        self.out(
            f"{total} checked: {self.sound} sound, {self.corrupt} corrupt, "
            f"{self.unchecked} not checked"
        )
        if self.corrupt:
            return EXIT_CORRUPT
        return EXIT_UNCHECKED if self.unchecked else EXIT_OK


def describe(result: VerifyResult) -> str:
    checksum = (
        f"{result.checksum_type} matches" if result.checksum_checked else "no checksum recorded"
    )
    return f"{result.size} bytes, {result.entries} entries, gzip and tar sound, {checksum}"


def run_verify(
    target: str | None,
    *,
    config: Callable[[], Config],
    read_limit: float = 0,
    out: Print = print,
) -> int:
    """``config`` is only called when the stores are needed (not for a path)."""
    tally = Tally(out)
    if target is not None and (Path(target).is_file() or not _UUID.match(target)):
        path = Path(target)
        if not path.is_file():
            print(f"wingsbak: {target} is neither a file nor a backup uuid", file=sys.stderr)
            return EXIT_USAGE
        tally.run("file", str(path), lambda: describe(verify_file(path, read_limit=read_limit)))
        return tally.exit_status()
    from wingsbak.config import ConfigError

    try:
        cfg = config()
    except ConfigError as exc:
        print(f"wingsbak: {exc}", file=sys.stderr)
        return EXIT_USAGE
    found = _check_node(cfg, target, tally, read_limit)
    if target is not None and not found:
        print(f"wingsbak: no backup {target} on this node's stores", file=sys.stderr)
        return EXIT_USAGE
    return tally.exit_status()


def _check_node(cfg: Config, backup: str | None, tally: Tally, read_limit: float) -> int:
    """Check ``backup`` (every backup when None) wherever it is; returns how many found."""
    from wingsbak.storage.bucket import NodeBucket, S3Config, S3Error
    from wingsbak.storage.restic import ResticConfig, ResticStore
    from wingsbak.verify.stored import local_backups, s3_backups

    found = 0
    local = [i for i in local_backups(cfg.backup_dir) if backup in (None, i.backup)]
    for item in local:
        found += 1
        tally.run("local", _label(item), _local_check(item, read_limit))
    if S3Config.enabled(cfg):
        s3 = NodeBucket(S3Config.of(cfg))
        try:
            objects = [i for i in s3_backups(s3) if backup in (None, i.backup)]
        except S3Error as exc:
            tally.unchecked += 1
            tally.out(f"UNCHECKED  s3     the bucket's backups: {exc}")
            objects = []
        for item in objects:
            found += 1
            tally.run("s3", _label(item), _s3_check(s3, item, read_limit))
    restic = ResticConfig.of(cfg)
    if restic.repository:
        store = ResticStore(restic, cfg.backup_dir / ".restic-cache", host=cfg.uuid)
        store.checked.set()  # not the daemon: nothing to wait for
        found += _check_restic(store, backup, tally)
    return found


def _label(item: StoredBackup) -> str:
    return f"{item.name} ({item.location})"


def _local_check(item: StoredBackup, read_limit: float) -> Callable[[], str]:
    from wingsbak.verify.stored import check_local

    return lambda: describe(check_local(item, read_limit=read_limit))


def _s3_check(s3: NodeBucket, item: StoredBackup, read_limit: float) -> Callable[[], str]:
    from wingsbak.verify.stored import check_s3

    return lambda: describe(check_s3(s3, item, read_limit=read_limit))


def _check_restic(store: ResticStore, backup: str | None, tally: Tally) -> int:
    from wingsbak.storage.restic import ResticError
    from wingsbak.verify.stored import ResticChecker, check_restic_snapshot, restic_backups

    if backup is not None:
        try:
            snapshots = list(restic_backups(store, backup))
        except ResticError as exc:
            tally.unchecked += 1
            tally.out(f"UNCHECKED  restic {backup}: {exc}")
            return 1
        for server, name in snapshots:
            tally.run(
                "restic",
                f"{server}/{name}",
                lambda s=server, n=name: (
                    f"{check_restic_snapshot(store, s, n)} entries read "
                    "(restic checked every blob), tar sound"
                ),
            )
        return len(snapshots)

    def whole() -> str:
        finding = ResticChecker(store).check(None)
        if finding.corrupt:
            named = ", ".join(f"{s}/{b}" for s, b in finding.backups)
            suffix = f" (backups using the damaged data: {named})" if named else ""
            raise ArchiveCorrupt(finding.reason + suffix)
        return "restic check --read-data found no errors"

    tally.run("restic", store.repository, whole)
    return 1
