"""Problems an operator must hear of beyond the log line: a backup refused for want of free
space, a backup of a running game that may be inconsistent. Each is logged where it is found
and then passed to :func:`notify`, the one place the notifications (issue 22, section 3:
``system.backups.notify_url``) connect to; until then it records nothing more."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from wingsbak.log import get_logger

log = get_logger(__name__)

BACKUP_REFUSED_NO_SPACE = "backup_refused_no_space"
BACKUP_MAYBE_INCONSISTENT = "backup_maybe_inconsistent"


@dataclass(slots=True, frozen=True)
class Notice:
    kind: str  # one of the names above
    server: str
    backup: str
    sentence: str  # what happened, for a person: the same words as the log line's
    at: float = field(default_factory=time.time)


def notify(notice: Notice) -> None:
    """The hook. Called on the event loop; must not block."""
    log.debug("notice", kind=notice.kind, server=notice.server, backup=notice.backup)
