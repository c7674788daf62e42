"""A refused configuration names the key, never a secret's value (issue 18, item 12): at start
(``configuration_refused``, and the line printed for the operator), on SIGHUP
(``config_reload_refused``), and for a YAML syntax error on the token's line, which PyYAML
would quote (line and column instead)."""

from __future__ import annotations

import secrets
import signal
from typing import Any

import pytest

from tests.support.daemon_helpers import DaemonProcess, Node, wait_until

SECRET = secrets.token_hex(22)[:43]  # as long as the token


def no_part_of_secret(text: str) -> None:
    """Not even a quarter of it: PyYAML's snippet quoted 31 of 43 characters."""
    for i in range(len(SECRET) - 10):
        assert SECRET[i : i + 11] not in text, f"the secret leaked at {i}: {text[-2000:]}"


async def refused(proc: DaemonProcess) -> str:
    """Start ``proc`` expecting the refusal: exit 2; its log."""
    with pytest.raises(AssertionError, match="daemon exited 2"):
        await proc.start()
    return proc.log_path.read_text(encoding="utf-8", errors="replace")


def backups(proc: DaemonProcess) -> dict[str, Any]:
    b: dict[str, Any] = proc.config["system"]["backups"]
    return b


@pytest.mark.parametrize(
    ("place", "key"),
    [
        ("token-list", "token"),
        ("secret-mapping", "system.backups.s3.secret_access_key"),
        ("access-key-list", "system.backups.s3.access_key_id"),
        ("repository-list", "system.backups.restic.repository"),
        ("environment-list", "system.backups.restic.environment.RESTIC_PASSWORD"),
    ],
)
async def test_a_wrong_kind_of_secret_is_refused_by_its_key(
    daemon_process, place: str, key: str
) -> None:
    proc: DaemonProcess = daemon_process()
    if place == "token-list":
        proc.config["token"] = [SECRET]
    elif place == "secret-mapping":
        backups(proc)["s3"] = {"bucket": "b", "secret_access_key": {"value": SECRET}}
    elif place == "access-key-list":
        backups(proc)["s3"] = {"bucket": "b", "access_key_id": [SECRET]}
    elif place == "repository-list":
        backups(proc)["restic"] = {"repository": [f"rest:https://u:{SECRET}@h/"]}
    else:
        backups(proc)["restic"] = {"environment": {"RESTIC_PASSWORD": [SECRET]}}
    log = await refused(proc)
    assert "configuration_refused" in log and key in log
    no_part_of_secret(log)


async def test_a_yaml_syntax_error_on_the_token_line_gives_line_and_column(
    daemon_process, node: Node
) -> None:
    proc: DaemonProcess = daemon_process()
    cfg = node.root / "broken.yml"
    # An unclosed quote on the token's line: PyYAML's message quotes that line.
    cfg.write_text(f'uuid: x\ntoken: "{SECRET}\n', encoding="utf-8")
    proc.config["wings_config"] = str(cfg)
    log = await refused(proc)
    assert "configuration_refused" in log and "line 2, column 8" in log
    no_part_of_secret(log)


async def test_a_reload_refused_names_the_key_only(daemon_process, node: Node) -> None:
    proc: DaemonProcess = daemon_process()
    await proc.start()
    cfg_path = node.root / "cfg.yml"
    text = cfg_path.read_text(encoding="utf-8")
    cfg_path.write_text(text + f"token: [{SECRET}]\n", encoding="utf-8")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "config_reload_refused" in proc.logs(), "the refused reload")
    cfg_path.write_text(text + f'token: "{SECRET}\n', encoding="utf-8")  # syntax error
    proc.proc.send_signal(signal.SIGHUP)
    await wait_until(
        lambda: proc.logs().count("config_reload_refused") == 2, "the second refused reload"
    )
    log = proc.log_path.read_text(encoding="utf-8")
    assert "token: expected a string, got a list" in log and "line " in log
    no_part_of_secret(log)
    assert proc.proc.poll() is None  # a file that does not load changes nothing
