"""SIGHUP while the daemon starts (issue 18, item 7): ``systemctl reload`` right after a restart
must neither kill the daemon (systemd counts a death by SIGHUP as a clean exit and does not
restart it) nor be lost: the reload runs once the daemon is up.

Start-up is held at a known point without timing: the daemon's ``wings_config`` is a FIFO, so
reading the configuration waits until the test writes it."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from pathlib import Path

import aiohttp

from tests.support.daemon_helpers import DaemonProcess, Node, wait_until

WINGS_FILE = "debug: false\nsystem:\n  sftp: {bind_port: 2022}\n"


async def open_when_read(fifo: Path, proc: DaemonProcess) -> int:
    """Wait until the daemon opens ``fifo`` to read it (a writer's non-blocking open succeeds
    only then): the writing end, which the daemon reads to its close."""
    fd = -1

    def opened() -> bool:
        nonlocal fd
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.proc.returncode}: {proc.logs()}")
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return False
        return True

    await wait_until(opened, f"the daemon to read {fifo.name}", 20.0)
    return fd


def feed(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
    except BrokenPipeError:
        pass  # the reader is gone: the daemon died, which the test then reports
    finally:
        os.close(fd)


async def test_sighup_while_starting_is_applied_once_up(daemon_process, node: Node):
    fifo = node.root / "wings-config.yml"
    os.mkfifo(fifo)
    proc: DaemonProcess = daemon_process()
    proc.config["wings_config"] = str(fifo)
    starting = asyncio.create_task(proc.start())
    try:
        await wait_until(lambda: proc.proc is not None, "the daemon to be spawned")
        assert proc.proc is not None
        # Held inside start-up, reading its configuration: the reload arrives now.
        fd = await open_when_read(fifo, proc)
        proc.proc.send_signal(signal.SIGHUP)
        feed(fd, WINGS_FILE)
        await starting  # up, and serving

        # Once up, the reload reads both files again (the FIFO a second time).
        feed(await open_when_read(fifo, proc), WINGS_FILE)
        await wait_until(lambda: "config_reloaded" in proc.logs(), "the deferred reload")
        log = proc.log_path.read_text()
        assert log.index("wingsbak_started") < log.index("config_reload_after_start")
        assert log.index("config_reload_after_start") < log.index("config_reloaded")
        async with aiohttp.ClientSession() as s, s.get(proc.url + "/healthz") as r:
            assert r.status == 200
        assert await proc.stop() == 0
    finally:
        starting.cancel()
        proc.kill_if_running()
