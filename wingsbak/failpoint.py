"""Failpoints: a test stops the real process at an exact step, to kill it there, the way
etcd's gofail and TiKV's fail-rs do.

Inert unless ``WINGSBAK_FAILPOINT`` is set; it is read once, at import. ``<step>:kill``
SIGKILLs the process when it reaches ``step``; ``<step>:pause`` SIGSTOPs it there, so that a
test can look at the disk, then send SIGKILL or SIGCONT. A failpoint fires once per process.
The steps are named where :func:`hit` is called (``restore-*`` in archive/staging.py and
archive/extract.py).
"""

from __future__ import annotations

import os
import signal
import threading

from wingsbak.log import get_logger

log = get_logger(__name__)

_STEP, _, _ACTION = os.environ.get("WINGSBAK_FAILPOINT", "").partition(":")
_fired = False


def hit(step: str) -> None:
    global _fired
    if step != _STEP or _fired:
        return
    _fired = True
    log.warning("failpoint_reached", step=step, action=_ACTION or "kill")
    # To this thread: it stops (or dies) before it takes another step, whereas a signal to
    # the process may be taken by another thread while this one goes on.
    sig = signal.SIGSTOP if _ACTION == "pause" else signal.SIGKILL
    signal.pthread_kill(threading.get_ident(), sig)
