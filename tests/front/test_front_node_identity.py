"""The node's identity on its second day, with the real daemon process in front of the Wings
stand-in run from its own config.yml (tests/support/wings_standin.py, both flavours):

- the panel's configuration push (``POST /api/update``, the panel's real payload, sent as
  NodeUpdateService sends it) never gives Wings the public port back, and a token reset is
  followed at once by everything wingsbak checks, signs and sends, while Wings gets the token
  it still holds until it takes the new one (Pelican Wings: at its restart);
- ``ignore_panel_config_updates`` in either file;
- an edit of Wings' file is followed without SIGHUP, a file that does not load changes nothing;
- ``wings configure`` (Wings' file with the public port) is detected and the fix logged;
- what a push set survives a kill -9, and an edit of the file after it wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml

from bench.tlscert import self_signed_certificate
from tests.support.daemon_helpers import (
    DaemonProcess,
    Node,
    Panel,
    free_port,
    new_uuid,
    sign,
    wait_until,
    ws_claims,
)
from tests.support.wings_standin import PELICAN, PTERODACTYL, WingsStandin
from wingsbak.config import deep_merge

WATCH = 0.1  # api.watch_interval of these tests (default 5 s)
# Far beyond any answer here: a request that takes it hangs, and fails where it hangs.
HANG = aiohttp.ClientTimeout(total=60)


def wings_config(node: Node, panel: Panel, wings_port: int, node_uuid: str) -> dict[str, Any]:
    """Wings' config.yml on a node fronted by wingsbak: the panel's configuration (what
    ``wings configure`` writes) with the README's edits (Wings on a loopback port, no TLS)."""
    raw = panel.node_configuration(node_uuid=node_uuid, port=8080, data=str(node.data))
    edits = {
        "api": {
            "host": "127.0.0.1",
            "port": wings_port,
            "ssl": {"enabled": False, "cert": "", "key": ""},
            "trusted_proxies": ["127.0.0.1"],
        },
        "system": {"backup_directory": str(node.backups)},
    }
    return deep_merge(raw, edits)


@dataclass
class Beside:
    node: Node
    panel: Panel
    wings: WingsStandin
    daemon: DaemonProcess
    wings_path: Path
    node_uuid: str

    @property
    def port(self) -> int:
        return int(self.daemon.config["api"]["port"])

    def log(self) -> str:
        """The daemon's whole log (``DaemonProcess.logs`` is its tail)."""
        return self.daemon.log_path.read_text(encoding="utf-8", errors="replace")

    def wings_file(self) -> dict[str, Any]:
        return yaml.safe_load(self.wings_path.read_text(encoding="utf-8"))

    def write_wings_file(self, raw: dict[str, Any] | str) -> None:
        text = raw if isinstance(raw, str) else yaml.safe_dump(raw)
        self.wings_path.write_text(text, encoding="utf-8")

    async def status(self, path: str, token: str, method: str = "GET") -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(timeout=HANG) as s,
            s.request(method, self.daemon.url + path, headers=headers, ssl=False) as r,
        ):
            await r.read()
            return r.status

    async def post_backup(self, server: str, backup: str) -> int:
        """A backup asked for as the panel does (its record first), with its current token."""
        self.panel.register(server, backup)
        body = {"adapter": "wings", "uuid": backup, "ignore": ""}
        headers = {"Authorization": f"Bearer {self.panel.node_token}"}
        async with (
            aiohttp.ClientSession(timeout=HANG) as s,
            s.post(
                f"{self.daemon.url}/api/servers/{server}/backup", json=body, headers=headers
            ) as r,
        ):
            return r.status

    async def save_node(self, **kw: Any) -> tuple[int, Any]:
        """The admin saves the node's settings (the panel's real push)."""
        return await self.panel.save_node(
            self.daemon.url,
            node_uuid=self.node_uuid,
            port=self.port,
            data=str(self.node.data),
            ssl=False,
            **kw,
        )


@pytest.fixture
async def beside(node: Node, panel: Panel) -> AsyncIterator[Callable[..., Any]]:
    """``await beside(flavour, own=..., wings=..., **backups)``: the Wings stand-in started from
    its file, and wingsbak (a process) in front of it, as the README's "Beside Wings" sets up."""
    made: list[Beside] = []

    async def start(
        flavour: str = PTERODACTYL,
        own: dict[str, Any] | None = None,
        wings: dict[str, Any] | None = None,
        **backups: Any,
    ) -> Beside:
        panel.flavour = flavour
        node_uuid, wings_port = new_uuid(), free_port()
        wings_path = node.root / "wings-config.yml"
        raw = deep_merge(wings_config(node, panel, wings_port, node_uuid), wings or {})
        wings_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        standin = WingsStandin(node.data, flavour=flavour, config_file=wings_path)
        await standin.start()
        config = {
            "wings_config": str(wings_path),
            "api": {
                "host": "127.0.0.1",
                "port": free_port(),
                "upstream": f"http://127.0.0.1:{wings_port}",
                "watch_interval": WATCH,
            },
            "system": {
                "backups": {
                    "report_retry_initial": 0.05,
                    "report_retry_max": 0.2,
                    "shutdown_grace": 0.5,
                    **backups,
                }
            },
        }
        daemon = DaemonProcess(node, deep_merge(config, own or {}), node.root / "daemon.log")
        b = Beside(node, panel, standin, daemon, wings_path, node_uuid)
        made.append(b)
        await daemon.start()
        return b

    yield start
    for b in made:
        b.daemon.kill_if_running()
        await b.wings.stop()


def resigned(token: str, key: str) -> str:
    """A panel JWT signed with another key (one the panel held before a reset)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, key, algorithm="HS256", headers=jwt.get_unverified_header(token))


async def socket_answer(b: Beside, server: str, token: str) -> str:
    """The first answer to ``auth`` on a console socket opened through wingsbak."""
    async with (
        aiohttp.ClientSession(timeout=HANG) as s,
        s.ws_connect(
            f"{b.daemon.url}/api/servers/{server}/ws", headers={"Origin": b.panel.url}
        ) as ws,
    ):
        await ws.send_str(json.dumps({"event": "auth", "args": [token]}))
        msg = await ws.receive(timeout=20)
        return str(json.loads(msg.data)["event"])


async def download_status(b: Beside, token: str) -> int:
    async with (
        aiohttp.ClientSession(timeout=HANG) as s,
        s.get(f"{b.daemon.url}/download/backup", params={"token": token}) as r,
    ):
        await r.read()
        return r.status


def bearer_seen(b: Beside, path: str) -> str:
    """The Authorization of the last request Wings got on ``path``."""
    return [r for r in b.wings.requests if r.path == path][-1].headers.get("Authorization", "")


@dataclass
class Moved(DaemonProcess):
    """The daemon started from a file that names one port, listening on another."""

    listens_on: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listens_on}"


@pytest.mark.parametrize("flavour", [PTERODACTYL, PELICAN])
async def test_a_token_reset_pushed_by_the_panel(beside, flavour):
    b: Beside = await beside(flavour, console_before=["save-all"])
    server = b.node.server()
    b.wings.server(server, state="running")
    old, old_id = b.panel.node_token, b.panel.node_token_id
    status_path = f"/api/servers/{server}"

    assert await b.save_node(reset_token=True) == (200, {"applied": True})
    new, new_id = b.panel.node_token, b.panel.node_token_id
    assert (new, new_id) != (old, old_id)

    # Wings' file keeps Wings' own loopback address; it got the new token (both flavours).
    on_disk = b.wings_file()
    assert (on_disk["api"]["host"], on_disk["api"]["port"]) == ("127.0.0.1", b.wings.port)
    assert on_disk["api"]["ssl"]["enabled"] is False
    assert (on_disk["token"], on_disk["token_id"]) == (new, new_id)
    assert b.wings.token == (new if flavour == PTERODACTYL else old)

    # wingsbak: the new token at once, the old one refused, also on Wings' routes.
    assert await b.status("/api/wingsbak", new) == 200
    assert await b.status("/api/wingsbak", old) == 403
    assert await b.status(status_path, new) == 200
    held = new if flavour == PTERODACTYL else old
    assert bearer_seen(b, status_path) == f"Bearer {held}"
    assert await b.status(status_path, old) == 403

    # Reports carry the new token (the panel stand-in refuses any other); wingsbak's own call
    # to Wings (the console command before the backup) the one Wings holds.
    backup = new_uuid()
    assert await b.post_backup(server, backup) == 202
    report = await b.panel.wait_report(backup)
    assert report.headers["Authorization"] == f"Bearer {new_id}.{new}"
    assert bearer_seen(b, f"/api/servers/{server}/commands") == f"Bearer {held}"

    # Download links and console tokens signed with the new token work, with the old refused.
    link = b.panel.download_token(server, backup)
    assert await download_status(b, resigned(link, old)) == 401
    assert await download_status(b, link) == 200
    # (The claims of tests/front's console tokens: the stand-in's own check is the relay's.)
    # scope: Pelican's panel always sends it and Pelican Wings requires it (HasScope).
    console = sign(ws_claims(server, scope="websocket"), new)
    assert await socket_answer(b, server, console) == "auth success"
    # A signature Wings cannot verify is no JWT error to Wings (IsJwtError, websocket.go):
    # it answers "daemon error".
    assert await socket_answer(b, server, resigned(console, old)) == "daemon error"

    # Wings restarts (it reads its file): it takes its loopback address again, and the new
    # token; the node answers on its one URL, and Wings gets the new token from now on.
    await b.wings.restart()
    assert b.wings.token == new
    assert await b.status(status_path, new) == 200
    assert bearer_seen(b, status_path) == f"Bearer {new}"
    backup = new_uuid()
    assert await b.post_backup(server, backup) == 202
    await b.panel.wait_report(backup)
    assert bearer_seen(b, f"/api/servers/{server}/commands") == f"Bearer {new}"
    assert "wings_token_followed" in b.log() or flavour == PTERODACTYL


@pytest.mark.parametrize("where", ["wings", "own"])
async def test_ignore_panel_config_updates_in_either_file(beside, where):
    flag = {"ignore_panel_config_updates": True}
    b: Beside = await beside(**{where: flag})
    before = b.wings_path.read_bytes()
    old = b.panel.node_token

    assert await b.save_node(reset_token=True) == (200, {"applied": False})
    assert b.wings_path.read_bytes() == before
    assert await b.status("/api/wingsbak", old) == 200
    assert await b.status("/api/wingsbak", b.panel.node_token) == 403
    assert b.wings.token == old


async def test_a_push_with_another_port_moves_the_listener_and_survives_a_kill(beside):
    b: Beside = await beside()
    token, old_port, new_port = b.panel.node_token, b.port, free_port()
    status, answer = await b.panel.save_node(
        b.daemon.url, node_uuid=b.node_uuid, port=new_port, data=str(b.node.data)
    )
    assert (status, answer) == (200, {"applied": True})
    await wait_until(lambda: "listener_moved" in b.log(), "the listener to move")
    b.daemon.config["api"]["port"] = new_port  # where the panel calls the node now
    assert await b.status("/api/wingsbak", token) == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession(timeout=HANG) as s, s.get(f"http://127.0.0.1:{old_port}/healthz"):
            pass
    assert b.wings_file()["api"]["port"] == b.wings.port

    # Kept in wingsbak's state, never in Wings' file: after a kill -9 the daemon, started from
    # its unchanged file (the old port), listens where the panel said.
    assert await b.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    b.daemon.config["api"]["port"] = old_port
    again = Moved(b.node, b.daemon.config, b.daemon.log_path, listens_on=new_port)
    try:
        await again.start()
        async with (
            aiohttp.ClientSession(timeout=HANG) as s,
            s.get(again.url + "/api/wingsbak", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            assert r.status == 200

        # An edit of wingsbak's file after the push wins (the last writer, as in Wings).
        third = free_port()
        again.config["api"]["port"] = third
        (b.node.root / "cfg.yml").write_text(yaml.safe_dump(again.config), encoding="utf-8")
        assert again.proc is not None
        again.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: b.log().count("listener_moved") >= 2, "the listener")
        again.listens_on = third
        async with (
            aiohttp.ClientSession(timeout=HANG) as s,
            s.get(again.url + "/api/wingsbak", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            assert r.status == 200
        assert "pushed_setting_superseded" in b.log()
    finally:
        again.kill_if_running()


async def test_an_edit_of_wings_file_is_followed_without_sighup(beside):
    """A token reset copied into Wings' file by hand (Pelican's way): wingsbak follows it at
    once; Wings only at its restart. A file that does not load changes nothing meanwhile."""
    b: Beside = await beside(PELICAN)
    server = b.node.server()
    b.wings.server(server)
    old = b.panel.node_token
    complete = b.wings_file()
    text = yaml.safe_dump({**complete, "token": "n" * 64, "token_id": "NewTokenId0123xy"})

    # What a reader can catch while the file is rewritten in place: empty, cut short, or whole
    # but without a token. Each is refused, and the old token keeps working.
    cut = text[: text.index("\ntoken:") + len("\ntoken")]
    no_token = yaml.safe_dump({k: v for k, v in complete.items() if k != "token"})
    for refused, bad in enumerate(("", cut, no_token), start=1):
        b.write_wings_file(bad)
        await wait_until(
            lambda n=refused: b.log().count("config_reload_refused") >= n,
            "the refusal of a file that does not load",
        )
        assert await b.status("/api/wingsbak", old) == 200
    assert "node_token_changed" not in b.log()

    b.write_wings_file(text)
    new = "n" * 64

    async def follows() -> bool:
        return await b.status("/api/wingsbak", new) == 200

    await wait_until(follows, "wingsbak to take the new token from Wings' file")
    assert await b.status("/api/wingsbak", old) == 403
    # Wings still has the token it started with; Wings' routes answer the new token.
    assert await b.status(f"/api/servers/{server}", new) == 200
    assert bearer_seen(b, f"/api/servers/{server}") == f"Bearer {old}"
    await b.wings.restart()
    assert await b.status(f"/api/servers/{server}", new) == 200
    assert bearer_seen(b, f"/api/servers/{server}") == f"Bearer {new}"


async def test_wings_configure_taking_the_public_port_is_logged_with_the_fix(beside):
    b: Beside = await beside()
    assert "wings_config_takes_public_address" not in b.log()
    # `wings configure` writes the panel's configuration as it is: the public port.
    configured = b.panel.node_configuration(
        node_uuid=b.node_uuid, port=b.port, data=str(b.node.data)
    )
    b.write_wings_file(configured)
    await wait_until(
        lambda: "wings_config_takes_public_address" in b.log(), "the error to be logged"
    )
    line = next(
        json.loads(x)
        for x in b.log().splitlines()
        if "wings_config_takes_public_address" in x
    )
    assert line["level"] == "error"
    assert line["wings_listens"] == f"0.0.0.0:{b.port}"
    assert f"api.host: 127.0.0.1 and api.port: {b.wings.port}" in line["fix"]

    # At start too (before Wings' next start takes the port).
    await b.daemon.stop()
    start = len(b.log())
    await b.daemon.start()
    await wait_until(  # the check runs beside the start, which it never delays
        lambda: "wings_config_takes_public_address" in b.log()[start:], "the error at start"
    )


# -- the README's "Beside Wings", followed as written, over TLS -------------------------------


def readme_blocks() -> tuple[str, str]:
    """The YAML of the README's "Beside Wings": Wings' edits, then wingsbak's own file."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Beside Wings") :]
    section = section[: section.index("\n## ", 1)]
    blocks = [part.split("```", 1)[0] for part in section.split("```yaml\n")[1:]]
    return blocks[0], blocks[1]


class Certbot:
    """Let's Encrypt's layout: ``live/<name>/*.pem`` are links into ``archive/<name>/``, and a
    renewal writes new archive files and points the links at them (renaming a new link over
    the old one)."""

    def __init__(self, root: Path, name: str = "node.example.com") -> None:
        self.root, self.name, self.generation = root, name, 0
        (root / "archive" / name).mkdir(parents=True)
        (root / "live" / name).mkdir(parents=True)

    def live(self, what: str) -> Path:
        return self.root / "live" / self.name / f"{what}.pem"

    def issue(self) -> None:
        """A new certificate and key in archive/ (the links still point at the last ones)."""
        self.generation += 1
        made = self.root / f"made{self.generation}"
        made.mkdir()
        cert, key = self_signed_certificate(made)
        archive = self.root / "archive" / self.name
        cert.rename(archive / f"fullchain{self.generation}.pem")
        key.rename(archive / f"privkey{self.generation}.pem")

    def point(self, what: str) -> None:
        link, tmp = self.live(what), self.live(what).with_name(f".{what}.new")
        tmp.symlink_to(f"../../archive/{self.name}/{what}{self.generation}.pem")
        tmp.replace(link)

    def serial(self, generation: int) -> str:
        path = self.root / "archive" / self.name / f"fullchain{generation}.pem"
        return openssl_serial(["-in", str(path)])


def openssl_serial(args: list[str], der: bytes | None = None) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", *args],
        input=der,
        capture_output=True,
        check=True,
    )
    return out.stdout.decode().strip()


class Connection:
    """One TLS connection to the node, kept open, with the certificate it got."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.serial = openssl_serial(["-inform", "DER"], der)

    @classmethod
    async def open(cls, port: int) -> Connection:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return cls(*await asyncio.open_connection("127.0.0.1", port, ssl=ctx))

    async def healthz(self) -> int:
        self.writer.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 20)
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await asyncio.wait_for(self.reader.readexactly(length), 20)
        return int(head.split()[1])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def test_readme_beside_wings_followed_as_written_over_tls(node, panel, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    wings_edits, own_text = readme_blocks()
    certbot = Certbot(tmp_path / "letsencrypt")
    certbot.issue()
    certbot.point("fullchain")
    certbot.point("privkey")
    node_uuid, wings_port, public = new_uuid(), free_port(), free_port()
    # Wings' file: the panel's configuration (Configuration tab, `wings configure`) with the
    # README's edits.
    wings_path = node.root / "wings-config.yml"
    edits = yaml.safe_load(wings_edits.replace("8081", str(wings_port)))
    configured = panel.node_configuration(
        node_uuid=node_uuid, port=public, data=str(node.data), scheme="https"
    )
    configured["system"]["backup_directory"] = str(node.backups)
    wings_path.write_text(yaml.safe_dump(deep_merge(configured, edits)), encoding="utf-8")
    wings = WingsStandin(node.data, config_file=wings_path)
    await wings.start()
    # wingsbak's file as the README has it, with this machine's paths and ports (and a short
    # watch interval, the one key added).
    own_text = (
        own_text.replace("/etc/pterodactyl/config.yml", str(wings_path))
        .replace("/etc/letsencrypt/", f"{certbot.root}/")
        .replace("8080", str(public))
        .replace("8081", str(wings_port))
    )
    own = yaml.safe_load(own_text)
    own["api"]["watch_interval"] = WATCH
    own["system"]["backups"].update(shutdown_grace=0.5, console_settle=0)
    daemon = DaemonProcess(node, own, node.root / "daemon.log")
    b = Beside(node, panel, wings, daemon, wings_path, node_uuid)
    try:
        await daemon.start()
        assert daemon.url.startswith("https://")
        token = panel.node_token
        assert await b.status("/api/system", token) == 200  # Wings' answer, over wingsbak's TLS
        assert wings.requests[-1].path == "/api/system"
        first = await Connection.open(public)
        assert first.serial == certbot.serial(1)
        assert await first.healthz() == 200

        # The node's settings saved (https: Let's Encrypt paths): wingsbak keeps its certificate,
        # Wings its loopback address without TLS.
        assert await b.save_node(scheme="https") == (200, {"applied": True})
        on_disk = b.wings_file()
        assert (on_disk["api"]["host"], on_disk["api"]["port"]) == ("127.0.0.1", wings_port)
        assert on_disk["api"]["ssl"]["enabled"] is False
        assert (await Connection.open(public)).serial == certbot.serial(1)

        # Wings restarted: the node answers on its one URL.
        await wings.restart()
        assert await b.status("/api/system", token) == 200

        # A renewal. The certificate first (a key that does not match it yet: kept as it was),
        # then the key: new handshakes get the new certificate; the open connection goes on.
        certbot.issue()
        certbot.point("fullchain")
        await wait_until(lambda: "tls_certificate_not_reloaded" in b.log(), "the half renewal")
        assert (await Connection.open(public)).serial == certbot.serial(1)
        certbot.point("privkey")

        async def renewed() -> bool:
            c = await Connection.open(public)
            await c.close()
            return c.serial == certbot.serial(2)

        await wait_until(renewed, "new connections to get the renewed certificate")
        assert await first.healthz() == 200
        assert first.serial == certbot.serial(1)
        await first.close()

        # A token reset: the node answers the new token on its one URL.
        assert await b.save_node(reset_token=True, scheme="https") == (200, {"applied": True})
        assert await b.status("/api/system", panel.node_token) == 200
        assert await b.status("/api/system", token) == 403
    finally:
        daemon.kill_if_running()
        await wings.stop()


async def test_a_certificate_renewal_reaches_new_handshakes_without_a_restart(
    daemon_process, tmp_path
):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certbot = Certbot(tmp_path / "letsencrypt")
    certbot.issue()
    certbot.point("fullchain")
    certbot.point("privkey")
    daemon: DaemonProcess = daemon_process()
    live = {"cert": str(certbot.live("fullchain")), "key": str(certbot.live("privkey"))}
    daemon.config["api"].update(watch_interval=WATCH, ssl={"enabled": True, **live})
    await daemon.start()
    port = daemon.config["api"]["port"]
    kept = await Connection.open(port)
    assert kept.serial == certbot.serial(1)

    certbot.issue()
    certbot.point("fullchain")
    certbot.point("privkey")

    async def renewed() -> bool:
        c = await Connection.open(port)
        await c.close()
        return c.serial == certbot.serial(2)

    await wait_until(renewed, "new connections to get the renewed certificate")
    assert await kept.healthz() == 200
    assert kept.serial == certbot.serial(1)
    await kept.close()
    assert daemon.proc is not None and daemon.proc.poll() is None


async def test_standalone_a_token_reset_is_kept_in_the_state_directory(
    daemon_process, panel, tmp_path, monkeypatch
):
    """No Wings: the push is wingsbak's alone; what it set lives in $STATE_DIRECTORY (systemd's
    StateDirectory), owner-only, and the configuration file is never written."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    daemon: DaemonProcess = daemon_process(remote=panel.url)
    await daemon.start()
    own = (daemon.node.root / "cfg.yml").read_bytes()
    old = panel.node_token
    b = Beside(daemon.node, panel, WingsStandin(daemon.node.data), daemon, Path(), new_uuid())
    assert await b.save_node(reset_token=True) == (200, {"applied": True})
    new = panel.node_token
    assert await b.status("/api/wingsbak", new) == 200
    assert await b.status("/api/wingsbak", old) == 403
    assert (daemon.node.root / "cfg.yml").read_bytes() == own
    saved = state / "node-state.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert not (daemon.node.backups / ".wingsbak-node-state.json").exists()

    assert await daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    await daemon.start()
    assert await b.status("/api/wingsbak", new) == 200
    assert await b.status("/api/wingsbak", old) == 403
    backup = new_uuid()
    server = daemon.node.server()
    assert await b.post_backup(server, backup) == 202
    report = await panel.wait_report(backup)
    assert report.headers["Authorization"] == f"Bearer {panel.node_token_id}.{new}"
