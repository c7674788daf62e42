"""The keys of issue 22 (sections 1 and 4) in wingsbak's configuration: the values they
take, and a bad value refused by its key, also by the daemon process at start."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.daemon_helpers import DaemonProcess
from wingsbak.config import ConfigError, parse_config, parse_min_free_space


def backups(**keys: Any) -> dict[str, Any]:
    return {"system": {"backups": keys}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5%", (0, 0.05)), ("12.5 %", (0, 0.125)), (1073741824, (1073741824, 0.0)), ("0", (0, 0.0))],
)
def test_min_free_space_is_bytes_or_a_percentage(value: Any, expected: tuple[int, float]):
    cfg = parse_config(backups(min_free_space=value))
    assert parse_min_free_space(cfg.system.backups.min_free_space) == expected


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"min_free_space": "100%"}, "system.backups.min_free_space"),
        ({"min_free_space": "5 GB"}, "system.backups.min_free_space"),
        ({"min_free_space": -1}, "system.backups.min_free_space"),
        ({"console_wait_for": "(?=lookahead)"}, "system.backups.console_wait_for"),
        ({"console_wait_timeout": 0}, "system.backups.console_wait_timeout"),
        ({"quiesce": {"name": "x"}}, "system.backups.quiesce"),
        ({"quiesce": [{"name": "no pattern"}]}, "system.backups.quiesce[0]"),
        ({"quiesce": [{"image": "(unclosed"}]}, "system.backups.quiesce[0].image"),
        ({"quiesce": [{"image": "x", "wait_for": "a++"}]}, "system.backups.quiesce[0].wait_for"),
        ({"quiesce": [{"image": "x", "before": ["a\nb"]}]}, "system.backups.quiesce[0].before[0]"),
        ({"quiesce": [{"image": "x", "settle": -1}]}, "system.backups.quiesce[0]"),
        ({"clone_files": "yes"}, "system.backups.clone_files"),
    ],
)
def test_bad_values_of_the_new_keys_are_refused_by_their_key(keys: dict[str, Any], named: str):
    with pytest.raises(ConfigError) as refused:
        parse_config(backups(**keys))
    assert str(refused.value).startswith(named + ":"), str(refused.value)


async def test_the_daemon_refuses_to_start_with_a_pattern_re2_refuses(daemon_process):
    proc: DaemonProcess = daemon_process(console_wait_for="Saved (?=the game)")
    with pytest.raises(AssertionError, match="daemon exited 2"):
        await proc.start()
    assert "system.backups.console_wait_for" in proc.log_path.read_text()
