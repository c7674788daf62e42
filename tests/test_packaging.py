"""The files an operator installs: example configuration, systemd unit, Dockerfile."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wingsbak.config import ConfigError
from wingsbak.storage.select import load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_and_documents_every_key() -> None:
    cfg = load_config(ROOT / "config.example.yml")
    assert cfg.system.backups.compression_level == "best_speed"
    assert cfg.system.backups.s3.part_size == 5 * 1024 * 1024
    text = (ROOT / "config.example.yml").read_text()
    for key in (
        "write_limit",
        "compression_level",
        "checksum",
        "max_concurrent",
        "shutdown_grace",
        "restore_host_allowlist",
        "report_retry_initial",
        "report_retry_max",
        "bucket",
        "endpoint",
        "path_style",
        "part_size",
        "concurrency",
        "storage_class",
        "prefix",
        "max_body_bytes",
        "metrics_public",
        "header_timeout",
        "body_timeout",
        "keepalive_timeout",
        "max_connections_per_address",
        "trusted_proxies",
        "websocket_auth_timeout",
        "verify_interval",
        "verify_read_limit",
        "notify_url",
    ):
        assert f"{key}:" in text, key


def test_a_wings_config_loads_unchanged() -> None:
    wings = yaml.safe_load(
        """
debug: false
uuid: 5f0e5b0c-1111-4111-8111-111111111111
token_id: abc
token: secret
api: {host: 0.0.0.0, port: 8080, ssl: {enabled: false, cert: '', key: ''}, upload_limit: 100}
system:
  root_directory: /var/lib/pterodactyl
  log_directory: /var/log/pterodactyl
  data: /var/lib/pterodactyl/volumes
  backup_directory: /var/lib/pterodactyl/backups
  sftp: {bind_port: 2022}
  backups: {write_limit: 50, compression_level: best_compression}
docker: {network: {name: pterodactyl_nw}}
remote: https://panel.example.com
"""
    )
    cfg = parse_config(wings)
    assert cfg.system.backups.write_limit == 50
    assert cfg.system.backups.compression_level == "best_compression"
    assert cfg.remote == "https://panel.example.com"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"system": {"backups": {"compression_level": "fastest"}}}, "compression_level"),
        ({"system": {"backups": {"write_limit": "fast"}}}, "system.backups.write_limit"),
        ({"api": {"port": 70000}}, "api.port"),
        ({"api": {"header_timeout": 0}}, "api.header_timeout"),
        ({"api": {"body_timeout": -1}}, "api.body_timeout"),
        ({"api": {"keepalive_timeout": "long"}}, "api.keepalive_timeout"),
        ({"api": {"websocket_auth_timeout": float("inf")}}, "api.websocket_auth_timeout"),
        ({"api": {"max_connections_per_address": -1}}, "api.max_connections_per_address"),
        ({"api": {"trusted_proxies": ["10.0.0.0/33"]}}, "api.trusted_proxies"),
        ({"api": {"trusted_proxies": "127.0.0.1"}}, "api.trusted_proxies"),
        ({"system": {"backups": {"s3": {"part_size": 1024}}}}, "system.backups.s3.part_size"),
        ({"system": {"backups": {"s3": {"part_size": 6 << 30}}}}, "system.backups.s3.part_size"),
        ({"system": {"backups": {"s3": {"prefix": "/backups/"}}}}, "system.backups.s3.prefix"),
        ({"system": {"backups": {"report_retry_initial": 0}}}, "report_retry_initial"),
        ({"system": {"backups": {"report_retry_max": 0.1}}}, "report_retry_max"),
        ({"api": {"ssl": {"enabled": True, "cert": "/nonexistent"}}}, "api.ssl.cert"),
        ({"system": "nope"}, "system"),
    ],
)
def test_bad_values_are_refused_naming_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(raw)


def test_a_config_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_bytes(b"token: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"config\.yml: not UTF-8"):
        load_config(path)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    exe = Path(sys.executable).with_name("wingsbak")
    unit = (ROOT / "systemd" / "wingsbak.service").read_text()
    assert "Restart=always" in unit and "NoNewPrivileges=true" in unit
    # Verify the unit as installed, with the binary where this environment has it.
    unit = unit.replace("/usr/local/bin/wingsbak", str(exe))
    path = tmp_path / "wingsbak.service"
    path.write_text(unit)
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    problems = [ln for ln in proc.stderr.splitlines() if "wingsbak.service" in ln]
    assert proc.returncode == 0 and not problems, proc.stderr


def unit_settings() -> dict[str, list[str]]:
    """The [Service] settings of the shipped unit: name -> the words of each of its lines."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in (ROOT / "systemd" / "wingsbak.service").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings.setdefault(name, []).extend(value.split())
    return settings


def test_systemd_unit_serves_pterodactyl_and_pelican_nodes() -> None:
    """Issue 19, item 7: both panels' trees, each optional (a node has one; a path without
    "-" that is absent fails the start), wingsbak's own state directory, no config path fixed
    in the unit (the daemon finds /etc/wingsbak, /etc/pterodactyl or /etc/pelican), and a
    restart after any exit that was not a stop (issue 18, item 7: SIGHUP counts as clean)."""
    unit = unit_settings()
    assert set(unit["ReadWritePaths"]) == {"-/var/lib/pterodactyl", "-/var/lib/pelican"}
    assert set(unit["ReadOnlyPaths"]) == {"-/etc/pterodactyl", "-/etc/pelican", "-/etc/wingsbak"}
    assert unit["StateDirectory"] == ["wingsbak"]
    assert "/etc/wingsbak" not in unit["ReadWritePaths"]
    assert not any(v.startswith("WINGSBAK_CONFIG=") for v in unit.get("Environment", []))
    assert unit["Restart"] == ["always"]
    from wingsbak.daemon import SYSTEM_CONFIGS

    assert [str(p) for p in SYSTEM_CONFIGS] == [
        "/etc/wingsbak/config.yml",
        "/etc/pterodactyl/config.yml",
        "/etc/pelican/config.yml",
    ]


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    user_lines = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert user_lines and user_lines[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["wingsbak", "serve"]' in text
