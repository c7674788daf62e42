"""Failpoints: a test stops the real process at an exact step, to kill it there, the way
etcd's gofail and TiKV's fail-rs do.

Inert unless ``WINGSBAK_FAILPOINT`` is set; it is read once, at import. ``<step>:kill``
SIGKILLs the process when it reaches ``step``; ``<step>:pause`` SIGSTOPs it there, so that a
test can look at the disk, then send SIGKILL or SIGCONT; ``<step>:delay[:<seconds>]`` (only
where the step is awaited, :func:`reached`) holds that task alone for a while (2 s), so that a
signal lands while it waits. A failpoint fires once per process. The steps are named where
:func:`hit` and :func:`reached` are called (``restore-*`` in archive/staging.py and
archive/extract.py, ``backup-reported`` in jobs.py, ``server-delete-*`` in wings/lifecycle.py,
``index-written`` in archive/index.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from wingsbak.log import get_logger

log = get_logger(__name__)

_STEP, _, _REST = os.environ.get("WINGSBAK_FAILPOINT", "").partition(":")
_ACTION, _, _ARGUMENT = _REST.partition(":")
_fired = False


def _fire(step: str) -> bool:
    global _fired
    if step != _STEP or _fired:
        return False
    _fired = True
    log.warning("failpoint_reached", step=step, action=_ACTION or "kill")
    return True


def hit(step: str) -> None:
    if not _fire(step):
        return
    # To this thread: it stops (or dies) before it takes another step, whereas a signal to
    # the process may be taken by another thread while this one goes on.
    sig = signal.SIGSTOP if _ACTION == "pause" else signal.SIGKILL
    signal.pthread_kill(threading.get_ident(), sig)


async def reached(step: str) -> None:
    """:func:`hit` for a step of a coroutine, which may also be delayed there."""
    if step != _STEP or _ACTION != "delay":
        hit(step)
        return
    if _fire(step):
        await asyncio.sleep(float(_ARGUMENT or 2.0))
