"""restic as the oracle, and the configuration of a daemon whose wings backups go to restic."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "correct horse battery staple"

needs_restic = pytest.mark.skipif(
    shutil.which("restic") is None and not os.environ.get("CI"),
    reason="restic is not installed (apt-get install restic); CI installs it",
)


def restic_block(tmp: Path, repository: str | None = None, **over: Any) -> dict[str, Any]:
    password = tmp / "restic-password"
    if not password.exists():
        password.write_text(PASSWORD + "\n")
        password.chmod(0o600)
    block: dict[str, Any] = {
        "repository": repository or str(tmp / "repo"),
        "password_file": str(password),
    }
    block.update(over)
    return block


def restic_backups(tmp: Path, repository: str | None = None, **over: Any) -> dict[str, Any]:
    """``system.backups`` keys for ``start_daemon(**...)`` / ``daemon_process(**...)``."""
    return {"store": "restic", "restic": restic_block(tmp, repository, **over)}


def oracle_env(block: dict[str, Any]) -> dict[str, str]:
    """The environment of restic run by hand on the daemon's repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(block.get("environment", {}))
    env["RESTIC_REPOSITORY"] = block["repository"]
    env["RESTIC_PASSWORD_FILE"] = block["password_file"]
    env["RESTIC_CACHE_DIR"] = str(Path(block["password_file"]).parent / "oracle-cache")
    return env


def oracle(block: dict[str, Any], *args: str) -> subprocess.CompletedProcess[bytes]:
    """The restic CLI itself, on the daemon's repository."""
    return subprocess.run(["restic", *args], env=oracle_env(block), capture_output=True)


def snapshots(block: dict[str, Any], *tags: str) -> list[dict[str, Any]]:
    args = ["snapshots", "--json", "--no-lock"]
    if tags:
        args += ["--tag", ",".join(tags)]
    done = oracle(block, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or b"[]") or []


def listed(block: dict[str, Any], snapshot: str) -> dict[str, str]:
    """``restic ls --json``: server-relative path -> node type."""
    done = oracle(block, "ls", "--json", "--no-lock", snapshot)
    assert done.returncode == 0, done.stderr
    out: dict[str, str] = {}
    for line in done.stdout.splitlines():
        node = json.loads(line)
        if node.get("struct_type") == "node":
            out[node["path"].lstrip("/")] = node["type"]
    return out


def repo_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def restic_version() -> tuple[int, int]:
    out = subprocess.run(["restic", "version"], capture_output=True, text=True, check=True)
    match = re.match(r"restic (\d+)\.(\d+)", out.stdout)
    assert match is not None, out.stdout
    return int(match.group(1)), int(match.group(2))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def restic_processes(argument: str, parent: int | None = None) -> list[int]:
    """Running restic processes one of whose arguments contains ``argument`` (children of
    ``parent`` only, when given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent is not None and int(fields[1]) != parent:
            continue
        if argv[0].endswith(b"restic") and any(argument.encode() in a for a in argv[1:]):
            found.append(int(entry.name))
    return found


def log_events(log_path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon process that name ``event``."""
    found = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            found.append(entry)
    return found
