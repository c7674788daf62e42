"""Which file ``wingsbak serve`` reads without --config or $WINGSBAK_CONFIG (issue 19, item 7):
the systemd unit names none, so one unit serves a Pterodactyl node (/etc/pterodactyl), a Pelican
node (/etc/pelican) and wingsbak beside Wings (/etc/wingsbak, first).

The real daemon process runs in a mount namespace of its own whose /etc is the machine's with the
test's files laid over it (overlayfs): nothing is written to the machine's /etc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support.daemon_helpers import Node, auth, free_port, wait_until


def overlay_etc(layer: Path) -> list[str]:
    """The command prefix that runs a program with ``layer`` laid over /etc, privately."""
    mount = f"mount -t overlay overlay -o lowerdir={layer}:/etc /etc && exec \"$@\""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh"]


def overlay_works(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    layer = tmp / "probe"
    (layer / "probe-dir").mkdir(parents=True)
    done = subprocess.run(
        [*overlay_etc(layer), "test", "-d", "/etc/probe-dir"], capture_output=True, timeout=30
    )
    return done.returncode == 0


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        (["pelican"], "pelican"),
        (["pterodactyl", "pelican"], "pterodactyl"),
        (["wingsbak", "pterodactyl"], "wingsbak"),
    ],
)
async def test_the_daemon_finds_its_file_on_either_panels_node(
    node: Node, tmp_path: Path, present: list[str], chosen: str
) -> None:
    if not overlay_works(tmp_path):
        pytest.skip("no mount namespace with overlayfs here (needs root and CAP_SYS_ADMIN)")
    layer = tmp_path / "etc-layer"
    port = free_port()
    for name in present:
        cfg = node.config_dict(port=port)
        # Only the chosen file holds the test's token: the daemon answers it only if it read
        # that file.
        cfg["token"] = f"token-of-{name}"
        (layer / name).mkdir(parents=True)
        (layer / name / "config.yml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "WINGSBAK_CONFIG"}
    log_path = tmp_path / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*overlay_etc(layer), sys.executable, "-m", "wingsbak", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        url = f"http://127.0.0.1:{port}/api/wingsbak"

        async def answers(s: aiohttp.ClientSession) -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode}: {log_path.read_text()}")
            try:
                async with s.get(url, headers=auth(f"token-of-{chosen}")) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        async with aiohttp.ClientSession() as s:
            await wait_until(lambda: answers(s), f"the daemon to serve /etc/{chosen}'s file", 20)
        # The line naming the file comes once the listener is up, perhaps after an answer.
        await wait_until(
            lambda: f"/etc/{chosen}/config.yml" in log_path.read_text(),
            f"the log to name /etc/{chosen}/config.yml",
            20,
        )
    finally:
        proc.kill()
        proc.wait()
