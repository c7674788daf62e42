"""Configuration in two files: Wings' config.yml for the node's identity and paths (read,
never written), wingsbak's own keys laid over it; SIGHUP re-reads both; one file as before."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from tests.support.daemon_helpers import NODE_TOKEN, DaemonProcess, free_port, new_uuid, wait_until
from wingsbak.config import ConfigError, default_config, load_config, parse_config


def wings_file(path: Path, node, **extra) -> dict:
    """What Wings writes (config.WriteToDisk): its whole struct, wingsbak's keys absent."""
    data = {
        "debug": False,
        "uuid": new_uuid(),
        "token_id": "wings-token-id",
        "token": NODE_TOKEN,
        "api": {
            "host": "127.0.0.1",
            "port": 8081,
            "ssl": {"enabled": False, "cert": "", "key": ""},
            "upload_limit": 100,
            "trusted_proxies": ["127.0.0.1"],
        },
        "system": {
            "root_directory": "/var/lib/pterodactyl",
            "data": str(node.data),
            "backup_directory": str(node.backups),
            "user": {"rootless": {"enabled": False}, "uid": 1234, "gid": 1234},
            "backups": {"write_limit": 7, "compression_level": "best_compression"},
        },
        "remote": "https://panel.example.com",
        "allowed_origins": [],
        **extra,
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return data


def test_identity_and_paths_come_from_wings_and_wingsbak_keys_win(tmp_path, node):
    wings = wings_file(tmp_path / "wings.yml", node)
    own = tmp_path / "wingsbak.yml"
    own.write_text(
        yaml.safe_dump(
            {
                "wings_config": "wings.yml",  # relative to wingsbak's own file
                "api": {"port": 443, "upstream": "http://127.0.0.1:8081"},
                "system": {"backups": {"max_concurrent": 3, "console_after": ["save-on"]}},
            }
        ),
        encoding="utf-8",
    )
    cfg = load_config(own)
    assert (cfg.uuid, cfg.token_id, cfg.token, cfg.remote) == (
        wings["uuid"],
        "wings-token-id",
        NODE_TOKEN,
        "https://panel.example.com",
    )
    assert (cfg.system.data, cfg.system.backup_directory) == (str(node.data), str(node.backups))
    assert (cfg.system.user.uid, cfg.system.user.gid) == (1234, 1234)
    # Wings' listen address is Wings'; wingsbak listens where its own file says.
    assert (cfg.api.host, cfg.api.port) == ("0.0.0.0", 443)
    assert cfg.upstream == "http://127.0.0.1:8081"
    # Only identity and paths are taken from Wings' file, nothing of Wings' backups block.
    assert (cfg.system.backups.write_limit, cfg.system.backups.compression_level) == (
        0,
        "best_speed",
    )
    assert cfg.system.backups.max_concurrent == 3
    assert cfg.system.backups.console_after == ["save-on"]


def test_wingsbak_file_overrides_a_path_and_a_missing_wings_file_is_named(tmp_path, node):
    wings_file(tmp_path / "wings.yml", node)
    own = tmp_path / "wingsbak.yml"
    own.write_text(
        yaml.safe_dump(
            {"wings_config": str(tmp_path / "wings.yml"), "system": {"backup_directory": "/b"}}
        )
    )
    assert load_config(own).system.backup_directory == "/b"
    own.write_text(yaml.safe_dump({"wings_config": str(tmp_path / "absent.yml")}))
    with pytest.raises(ConfigError, match=r"absent\.yml"):
        load_config(own)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"api": {"upstream": "ftp://x"}}, "api.upstream"),
        ({"api": {"upstream": "http://127.0.0.1:8081/api"}}, "api.upstream"),
        ({"api": {"upstream_ca": "/nonexistent.pem"}}, "api.upstream_ca"),
        ({"system": {"backups": {"restore_stop_timeout": 0}}}, "restore_stop_timeout"),
        ({"system": {"backups": {"console_settle": -1}}}, "console_settle"),
        ({"system": {"backups": {"console_before": ["a\nb"]}}}, "console_before"),
        ({"system": {"backups": {"console_after": "save-on"}}}, "console_after"),
    ],
)
def test_bad_values_of_the_new_keys_are_refused_by_name(raw, key):
    with pytest.raises(ConfigError, match=key):
        parse_config(raw)


def test_one_file_and_the_embedded_default_are_standalone():
    assert parse_config({}).upstream == ""
    assert parse_config({}).wings_config == ""
    cfg = default_config()
    assert cfg.upstream == "" and cfg.system.backups.restore_stop_timeout == 120.0


async def test_standalone_keeps_its_own_api_system_and_does_not_proxy(start_daemon, panel):
    daemon = await start_daemon(remote=panel.url)
    info = await daemon.system()
    assert "jobs" in info  # wingsbak's own answer
    async with daemon.request("GET", "/echo/x") as r:
        assert r.status == 404


async def test_sighup_rereads_both_files_and_never_writes_wings_file(node, wings, client):
    wings_path = node.root / "wings.yml"
    wings_file(wings_path, node)
    before = wings_path.read_bytes()
    own = {
        "wings_config": str(wings_path),
        "api": {"host": "127.0.0.1", "port": free_port(), "upstream": wings.url},
        "system": {"backups": {"shutdown_grace": 0.5}},
    }
    daemon = DaemonProcess(node, own, node.root / "daemon.log")
    await daemon.start()
    try:
        server = node.server()
        s = wings.server(server, state="running")

        async def backup() -> None:
            b = new_uuid()
            assert await daemon.post_backup(server, b) == 202
            await wait_until(lambda: node.archive(server, b).is_file(), "the backup")

        await backup()
        assert s.commands == []

        own["system"]["backups"].update(console_before=["save-off"], max_concurrent=4)
        (node.root / "cfg.yml").write_text(yaml.safe_dump(own), encoding="utf-8")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "config_changes_need_restart" in daemon.logs(), "the reload")
        assert "system.backups.max_concurrent" in daemon.logs()
        await backup()
        await wait_until(lambda: s.commands == ["save-off"], "the console command")
    finally:
        await daemon.stop()
    assert wings_path.read_bytes() == before


def test_example_config_documents_the_front_keys():
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "config.example.yml")
    assert cfg.upstream == "" and cfg.wings_config == ""
    text = (root / "config.example.yml").read_text()
    for key in (
        "wings_config",
        "upstream",
        "upstream_ca",
        "restore_stop_timeout",
        "console_before",
        "console_settle",
        "console_after",
    ):
        assert f"\n{key}:" in text or f" {key}:" in text, key
