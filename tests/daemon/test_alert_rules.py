"""The Prometheus alert rules shipped in deploy/prometheus: valid (``promtool check rules``),
behaving as their cases say (``promtool test rules``), and about metrics the daemon really
exposes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon_helpers import Daemon, auth

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool is not installed (apt-get install prometheus); CI installs it",
)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", "wingsbak-alerts.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


@needs_promtool
def test_promtool_runs_the_rule_cases() -> None:
    done = subprocess.run(
        ["promtool", "test", "rules", "wingsbak-alerts.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_rules_use_metrics_the_daemon_exposes(daemon: Daemon) -> None:
    async with daemon.session.get(f"{daemon.url}/metrics", headers=auth()) as r:
        assert r.status == 200
        exposed = set(re.findall(r"^# TYPE (\S+) (\S+)$", await r.text(), re.M))
    names = {name for name, _kind in exposed}
    # Counters are exposed as <name>_total.
    names |= {f"{name}_total" for name, kind in exposed if kind == "counter"}
    used = set(re.findall(r"\bwingsbak_\w+", (RULES / "wingsbak-alerts.yml").read_text()))
    assert used, "no wingsbak metric in the rules"
    assert used <= names, used - names
