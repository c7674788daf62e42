"""Each server's last successful and last failed backup in /metrics, against the real daemon
process: set when a backup ends, the same after a restart (an alert on "no success in 26 h"
must neither fire nor go quiet because the daemon restarted), gone with the server; and the
backup directory's free space."""

from __future__ import annotations

import os
import shutil
import time

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid
from tests.support.trust_helpers import metrics

MIB = 1024 * 1024
SUCCESS = 'wingsbak_backup_last_success_timestamp_seconds{{server="{}"}}'
FAILURE = 'wingsbak_backup_last_failure_timestamp_seconds{{server="{}"}}'


async def test_last_success_and_failure_per_server_survive_a_restart(
    daemon_process, node: Node, panel: Panel
) -> None:
    proc: DaemonProcess = daemon_process(remote=panel.url, verify_interval=0)
    await proc.start()
    good = node.server({"world/level.dat": "x" * 10_000})
    bad = node.server({".pteroignore": "*.log\n" * (MIB // 6 + 100)})  # over the 1 MiB read
    before = time.time()
    ok, failed = new_uuid(), new_uuid()
    assert await proc.post_backup(good, ok) == 202
    assert (await panel.wait_report(ok)).json["successful"] is True
    assert await proc.post_backup(bad, failed) == 202
    assert (await panel.wait_report(failed)).json["successful"] is False
    after = time.time()

    m = await metrics(proc.url)
    assert before <= m[SUCCESS.format(good)] <= after
    assert before <= m[FAILURE.format(bad)] <= after
    assert FAILURE.format(good) not in m and SUCCESS.format(bad) not in m

    # The backup directory's file system, as statvfs says.
    st = os.statvfs(node.backups)
    size = m["wingsbak_backup_directory_size_bytes"]
    assert size == st.f_blocks * st.f_frsize
    assert 0 < m["wingsbak_backup_directory_free_bytes"] <= size

    await proc.stop()
    await proc.start()
    again = await metrics(proc.url)
    assert again[SUCCESS.format(good)] == m[SUCCESS.format(good)]
    assert again[FAILURE.format(bad)] == m[FAILURE.format(bad)]

    # A later success of the failing server keeps its failure time beside the new success.
    (node.data / bad / ".pteroignore").unlink()
    fixed = new_uuid()
    assert await proc.post_backup(bad, fixed) == 202
    assert (await panel.wait_report(fixed)).json["successful"] is True
    latest = await metrics(proc.url)
    assert latest[SUCCESS.format(bad)] > latest[FAILURE.format(bad)] == m[FAILURE.format(bad)]

    # A server deleted in the panel (its directory gone) leaves no series behind to alert on.
    await proc.stop()
    shutil.rmtree(node.data / bad)
    await proc.start()
    gone = await metrics(proc.url)
    assert SUCCESS.format(bad) not in gone and FAILURE.format(bad) not in gone
    assert gone[SUCCESS.format(good)] == m[SUCCESS.format(good)]
    await proc.stop()
