"""Failures nobody misses, against the real daemon process: a failed backup or restore is
announced to ``notify_url`` in the shape Discord and Slack webhooks take, through the
outbox (a receiver that is down gets it once it is back, across a restart; a panel that is
down holds nothing up), and the URL, which carries the webhook's token, is never written
down."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.daemon_helpers import DaemonProcess, Node, Panel, new_uuid, wait_until
from tests.support.trust_helpers import WebhookReceiver, flip_byte, log_events, wait_event
from wingsbak.config import ConfigError, parse_config
from wingsbak.notify import message

MIB = 1024 * 1024


def failing_server(node: Node) -> str:
    """A server whose backups fail: its .pteroignore is over the 1 MiB that is read."""
    return node.server({".pteroignore": "*.log\n" * (MIB // 6 + 100), "a.txt": "a"})


@pytest.mark.parametrize("flavour", ["discord", "slack"])
async def test_a_failed_backup_and_a_failed_restore_are_announced(
    daemon_process, node: Node, panel: Panel, flavour: str
) -> None:
    receiver = WebhookReceiver(flavour)
    await receiver.start()
    proc: DaemonProcess = daemon_process(
        remote=panel.url, verify_interval=0, notify_url=receiver.url
    )
    await proc.start()
    before = time.time()
    server = failing_server(node)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    assert (await panel.wait_report(backup)).json["successful"] is False
    (got,) = await receiver.wait(1)
    note = got.body
    assert got.content_type.startswith("application/json")
    assert note["event"] == "backup_failed"
    assert (note["server"], note["backup"], note["store"]) == (server, backup, "local")
    assert "pteroignore" in note["error"].lower()
    assert note["content"] == note["text"]
    assert server in note["content"] and backup in note["content"] and "backup failed" in note[
        "content"
    ]
    stamp = time.mktime(time.strptime(note["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 1 <= stamp <= time.time() + 1
    assert note["node"] == proc.config["uuid"]

    # A restore of a backup whose archive no longer matches its checksum fails: announced.
    good = node.server({"world/level.dat": "x" * 20_000})
    kept = new_uuid()
    assert await proc.post_backup(good, kept) == 202
    assert (await panel.wait_report(kept)).json["successful"] is True
    flip_byte(node.archive(good, kept))
    assert await proc.post_restore(good, kept) == 202
    assert (await panel.wait_report(kept, restore=True)).json["successful"] is False
    await receiver.wait(2)
    note = receiver.received[1].body
    assert (note["event"], note["server"], note["backup"]) == ("restore_failed", good, kept)
    assert "checksum" in note["error"]
    assert note["content"] == note["text"] and "restore failed" in note["text"]
    assert receiver.refused == []
    assert len(receiver.received) == 2  # the successful backup announced nothing
    await proc.stop()
    await receiver.shutdown()


async def test_notifications_wait_out_a_receiver_outage_across_a_restart_with_the_panel_down(
    daemon_process, node: Node, panel_down: Panel
) -> None:
    receiver = WebhookReceiver()  # its port is reserved; nothing listens yet
    proc: DaemonProcess = daemon_process(
        remote=panel_down.url, verify_interval=0, notify_url=receiver.url
    )
    await proc.start()
    server = failing_server(node)
    backup = new_uuid()
    assert await proc.post_backup(server, backup) == 202
    await wait_event(proc.log_path, "notify_retry")
    await wait_event(proc.log_path, "panel_report_retry")
    outbox = (node.backups / ".wingsbak-outbox.json").read_text()
    items = json.loads(outbox)
    assert {i.get("target", "panel") for i in items} == {"panel", "notify"}
    # The URL holds the webhook's token: neither the outbox nor the log has it.
    assert "s3cr3t-token" not in outbox
    assert await proc.stop() == 0
    assert "s3cr3t-token" not in proc.log_path.read_text()

    await proc.start()  # the notification is still owed after a restart
    await receiver.start()
    (got,) = await receiver.wait(1)
    assert (got.body["event"], got.body["backup"]) == ("backup_failed", backup)
    delivered = await wait_event(proc.log_path, "notify_delivered")
    assert delivered["attempts"] >= 1
    # The panel was down all along: the notification did not wait for it.
    assert panel_down.reports(backup) == []
    await panel_down.start()
    assert (await panel_down.wait_report(backup)).json["successful"] is False

    # And the other way round: a webhook that is down holds up no report to the panel.
    await receiver.stop()
    retries = len(log_events(proc.log_path, "notify_retry"))
    second = new_uuid()
    assert await proc.post_backup(server, second) == 202
    assert (await panel_down.wait_report(second)).json["successful"] is False
    await wait_until(
        lambda: len(log_events(proc.log_path, "notify_retry")) > retries, "a notify retry"
    )
    assert len(receiver.received) == 1
    await receiver.start()
    await receiver.wait(2)
    assert receiver.received[1].body["backup"] == second
    await proc.stop()
    assert len(receiver.received) == 2  # each once, not once per attempt or per start
    assert "s3cr3t-token" not in proc.log_path.read_text()
    assert not [e for e in log_events(proc.log_path, "notify_refused")]
    await receiver.shutdown()


def test_the_keys_are_checked_and_a_refused_url_is_not_repeated(node: Node) -> None:
    def backups(**keys: object) -> dict[str, object]:
        return node.config_dict(**keys)

    cfg = parse_config(backups())
    assert cfg.system.backups.verify_interval == 86400
    assert cfg.system.backups.verify_read_limit == 50
    assert cfg.system.backups.notify_url == ""
    for bad, key in (
        ({"verify_interval": -1}, "verify_interval"),
        ({"verify_interval": float("nan")}, "verify_interval"),
        ({"verify_read_limit": -5}, "verify_read_limit"),
        ({"notify_url": "ftp://hooks.example/s3cr3t"}, "notify_url"),
        ({"notify_url": "https:///s3cr3t"}, "notify_url"),
        ({"notify_url": "http://[::1/s3cr3t"}, "notify_url"),
    ):
        with pytest.raises(ConfigError, match=key) as err:
            parse_config(backups(**bad))
        assert "s3cr3t" not in str(err.value)
    assert parse_config(backups(verify_interval=0)).system.backups.verify_interval == 0


def test_a_long_or_hostile_error_still_makes_a_valid_message() -> None:
    body = message(
        "backup_failed", server="s", backup="b", error="<@everyone> " + "x" * 5000, when=0
    )
    assert body["content"] == body["text"]
    assert len(body["content"]) <= 2000 and body["content"].endswith("\u2026")
    assert "<" not in body["content"] and ">" not in body["content"]
    assert body["error"].startswith("<@everyone>")  # the field keeps the text as it was
    assert body["allowed_mentions"] == {"parse": []}
    assert body["time"] == "1970-01-01T00:00:00Z"
