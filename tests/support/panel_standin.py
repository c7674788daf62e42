"""A panel stand-in that behaves like the stock panels, for every suite that drives the daemon.

A real HTTP server on 127.0.0.1 that records every request and answers ``/api/remote/...`` by
the rules of the panels' own code, read at pterodactyl/panel 706db62 and pelican-dev/panel
235c8fb (``flavour`` picks one where they differ):

- ``DaemonAuthenticate``: ``Authorization: Bearer <token_id>.<token>`` (401 without, 400
  malformed, 403 wrong);
- ``ReportBackupCompleteRequest`` (422): ``successful`` boolean; ``checksum``,
  ``checksum_type`` (non-empty strings) and a numeric ``size`` when successful; ``parts``
  null or a list of ``{etag: string, part_number: numeric}``;
- ``BackupStatusController::index``: 404 unknown uuid, 403 another node's backup, 400 one
  already successful (a failed one may be reported again); a successful report of an ``s3``
  backup whose upload the panel never opened (no ``GET ?size=`` before) is refused,
  Pterodactyl 400 (``DisplayException``), Pelican 500 (``Exception``); parts that do not
  complete the upload are S3's error, a 500;
- ``BackupStatusController::restore``: 404 unknown uuid; Pelican also 403 another node's;
- ``BackupRemoteUploadController``: 400 without a non-zero ``size`` (PHP's ``(int)``), 404,
  403, 409 once complete, 400 for a backup not on S3; ``part_size`` Pterodactyl: 5 GiB unless
  configured (``max_part_size``, a value <= 0 falls back); Pelican: 128 MiB unless configured
  within 5 MiB..5 GiB; one pre-signed part URL per started part. The part URLs point at this
  stand-in, which takes the PUTs as a bucket would (ETag = MD5) and checks them at completion.

The panel knows a backup before the node hears of it (the panel creates the record, then
calls the node): tests :meth:`Panel.register` it first (``Daemon.post_backup`` does). Every
refusal by these rules is kept in ``rejections``; the ``panel`` fixture fails a test that
leaves any it did not expect (:meth:`Panel.take_rejections`).

The outages tests need are separate knobs: ``fail_first``/``fail_status`` and ``status``
answer before any rule applies; ``stop()``/``start()`` keep the port (a refused connection).

It also plays the panel's side of the node API: JWTs minted as each panel's
``NodeJWTService`` mints them (with ``clock_skew``), and Pelican's check of every node answer
(``DaemonRepository::enforceValidNodeToken``, ``DaemonSystemRepository``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import secrets
import socket
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import jwt
from aiohttp import web

NODE_TOKEN = "node-secret-token-" + "0123456789abcdef" * 3  # 66 bytes: enough for HS512
TOKEN_ID = "NodeTokenId0123x"  # the panels make 16 letters and digits (Str::random(16))
ACCEPT = "application/vnd.pterodactyl.v1+json"
PTERODACTYL = "pterodactyl"
PELICAN = "pelican"
GIB = 1024**3
MIB = 1024**2
PANEL_APP_URL = "http://panel.test"
# The panel the suites run against by default: ``WINGSBAK_TEST_PANEL=pelican pytest`` runs them
# all against Pelican's rules.
DEFAULT_FLAVOUR = os.environ.get("WINGSBAK_TEST_PANEL", PTERODACTYL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any


@dataclass
class PanelBackup:
    """The panel's ``backups`` row, as far as the remote API looks at it."""

    server: str
    node: str  # the token id of the node the server lives on
    disk: str  # "wings" or "s3"
    upload_id: str | None = None
    is_successful: bool = False
    completed_at: float | None = None
    checksum: str | None = None
    bytes: int = 0
    restores: list[bool] = field(default_factory=list)  # each restore report's "successful"


@dataclass
class Rejection:
    request: Recorded
    status: int
    reason: str


class PanelRefused(Exception):
    """What the panel's own rules answer (status and the reason it gives)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class NodeConnectionError(Exception):
    """What Pelican raises (``ConnectionException``) for a node answer it does not trust."""


@dataclass
class _Upload:
    parts: int
    etags: dict[int, str] = field(default_factory=dict)  # part number -> ETag of its PUT


def php_int(text: str) -> int:
    """PHP's ``(int)`` cast of a query string value: leading digits, else 0."""
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def _is_numeric(value: Any) -> bool:
    """Laravel's ``numeric`` rule (PHP ``is_numeric``) for a JSON value."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return (
        isinstance(value, str)
        and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value) is not None
    )


def _is_boolean(value: Any) -> bool:
    """Laravel's ``boolean`` rule: true, false, 0, 1, "0", "1"."""
    return value in (True, False, 0, 1, "0", "1") and not isinstance(value, float)


def _filled(value: Any) -> bool:
    """Laravel's ``required``: not null, not an empty (trimmed) string, not an empty list."""
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip() != ""
    if isinstance(value, list):
        return bool(value)
    return True


def validate_backup_report(body: Any) -> list[str]:
    """``ReportBackupCompleteRequest::rules()``; the fields that fail (empty: valid)."""
    if not isinstance(body, dict):
        return ["successful"]
    errors = []
    successful = body.get("successful")
    if not _filled(successful) or not _is_boolean(successful):
        errors.append("successful")
    ok = successful is True  # required_if:successful,true compares with true itself
    for name in ("checksum", "checksum_type"):
        value = body.get(name)
        if (ok and not _filled(value)) or (_filled(value) and not isinstance(value, str)):
            errors.append(name)
    size = body.get("size")
    if (ok and not _filled(size)) or (size is not None and not _is_numeric(size)):
        errors.append("size")
    parts = body.get("parts")
    if parts is not None and not isinstance(parts, list | dict):
        errors.append("parts")
    elif parts:
        for i, part in enumerate(parts.values() if isinstance(parts, dict) else parts):
            part = part if isinstance(part, dict) else {}
            if not _filled(part.get("etag")) or not isinstance(part.get("etag"), str):
                errors.append(f"parts.{i}.etag")
            if not _filled(part.get("part_number")) or not _is_numeric(part.get("part_number")):
                errors.append(f"parts.{i}.part_number")
    return errors


@dataclass
class Panel:
    """The stand-in; see the module's docstring.

    ``flavour``: ``PTERODACTYL`` or ``PELICAN``. ``max_part_size``: the panel's
    ``backups.max_part_size`` (None: not configured). ``clock_skew``: seconds the panel's
    clock runs ahead of the node's (negative: behind), for the JWTs it mints.
    """

    port: int = field(default_factory=free_port)
    flavour: str = DEFAULT_FLAVOUR
    status: int = 204
    fail_first: int = 0
    fail_status: int = 500
    max_part_size: int | None = None
    clock_skew: int = 0
    node_token_id: str = TOKEN_ID
    node_token: str = NODE_TOKEN
    requests: list[Recorded] = field(default_factory=list)
    attempts: int = 0
    backups: dict[str, PanelBackup] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    _uploads: dict[str, _Upload] = field(default_factory=dict)  # by upload id
    _runner: web.AppRunner | None = None
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    # Every live stand-in by its URL, so that a daemon's helpers find the panel it reports to.
    by_url: ClassVar[weakref.WeakValueDictionary[str, Panel]] = weakref.WeakValueDictionary()

    def __post_init__(self) -> None:
        if self.flavour not in (PTERODACTYL, PELICAN):
            raise ValueError(f"WINGSBAK_TEST_PANEL: {self.flavour!r} is not pterodactyl or pelican")
        Panel.by_url[self.url] = self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the panel's records ------------------------------------------------------------------

    def register(
        self, server: str, backup: str, disk: str = "wings", node: str | None = None
    ) -> PanelBackup:
        """Create the panel's record of a backup, as the panel does before calling the node.
        ``disk``: "wings" or "s3"; a backup in the node's own bucket is the node's business,
        "wings" to the panel. ``node``: the token id of the node owning the server."""
        record = PanelBackup(server, node or self.node_token_id, disk)
        self.backups[backup] = record
        return record

    def ensure(self, server: str, backup: str) -> PanelBackup:
        """The record of a backup the panel already knows (a restore of an existing backup)."""
        record = self.backups.get(backup)
        if record is None:
            record = self.register(server, backup)
            record.is_successful, record.completed_at = True, time.time()
        return record

    def take_rejections(self) -> list[Rejection]:
        """The refusals so far (a test that provoked them checks them here), then none."""
        taken, self.rejections = self.rejections, []
        return taken

    # -- the HTTP side --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/s3/"):
            return await self._put_part(request)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.attempts += 1
        rec = Recorded(
            request.method, request.path, request.query_string, dict(request.headers), body
        )
        self.requests.append(rec)
        self._event.set()
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.json_response({"errors": [{"code": "Fail"}]}, status=self.fail_status)
        if self.status != 204:
            return web.json_response({"errors": [{"code": "Refused"}]}, status=self.status)
        if not request.path.startswith("/api/remote/"):
            # Not the remote API, so not the daemon under test: a client of another test
            # process that had this port before (free ports are shared by the machine).
            return web.json_response({"errors": [{"code": "NotFound"}]}, status=404)
        try:
            self._authenticate(request)
            answer = self._route(request, body)
        except PanelRefused as exc:
            self.rejections.append(Rejection(rec, exc.status, exc.reason))
            return web.json_response(
                {"errors": [{"code": "Refused", "status": str(exc.status), "detail": exc.reason}]},
                status=exc.status,
            )
        if answer is None:
            return web.Response(status=204)
        return web.json_response(answer)

    def _authenticate(self, request: web.Request) -> None:
        """``DaemonAuthenticate``."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:]:
            raise PanelRefused(401, "Access to this endpoint must include an Authorization header.")
        parts = header[7:].split(".")
        if len(parts) != 2:
            raise PanelRefused(400, "The Authorization header provided was not in a valid format.")
        if parts[0] != self.node_token_id or not secrets.compare_digest(parts[1], self.node_token):
            raise PanelRefused(403, "You are not authorized to access this resource.")

    def _route(self, request: web.Request, body: Any) -> dict[str, Any] | None:
        m = re.fullmatch(r"/api/remote/backups/([^/]+)(/restore)?", request.path)
        if m is None:
            raise PanelRefused(404, "The requested resource could not be found.")
        backup, restore = m.group(1), m.group(2) is not None
        if request.method == "POST" and restore:
            return self._restore_report(backup, body)
        if request.method == "POST":
            return self._backup_report(backup, body)
        if request.method == "GET" and not restore:
            return self._part_urls(backup, request.query.get("size", ""))
        raise PanelRefused(405, "The method is not allowed.")

    def _record(self, backup: str) -> PanelBackup:
        record = self.backups.get(backup)
        if record is None:
            raise PanelRefused(404, "The requested resource could not be found.")
        return record

    def _own(self, record: PanelBackup) -> None:
        if record.node != self.node_token_id:
            raise PanelRefused(403, "You do not have permission to access that backup.")

    def _backup_report(self, backup: str, body: Any) -> None:
        invalid = validate_backup_report(body)
        if invalid:
            raise PanelRefused(422, f"The given data was invalid: {', '.join(invalid)}.")
        record = self._record(backup)
        self._own(record)
        if record.is_successful:
            raise PanelRefused(
                400, "Cannot update the status of a backup that is already marked as completed."
            )
        successful = body["successful"] in (True, 1, "1")
        if record.disk == "s3":
            self._complete_upload(record, successful, body.get("parts"))
        record.is_successful = successful
        record.completed_at = time.time()
        record.checksum = f"{body['checksum_type']}:{body['checksum']}" if successful else None
        record.bytes = int(float(body["size"])) if successful else 0

    def _complete_upload(self, record: PanelBackup, successful: bool, parts: Any) -> None:
        """``completeMultipartUpload`` (the transaction around it rolls the record back)."""
        if record.upload_id is None:
            if not successful:
                return
            status = 400 if self.flavour == PTERODACTYL else 500
            raise PanelRefused(
                status, "Cannot complete backup request: no upload_id present on model."
            )
        upload = self._uploads.pop(record.upload_id)
        if not successful:
            return  # AbortMultipartUpload
        if parts is None:  # ListParts: whatever was uploaded
            return
        listed = parts.values() if isinstance(parts, dict) else parts
        given = {int(float(p["part_number"])): p["etag"] for p in listed}
        if not given or given != upload.etags:
            self._uploads[record.upload_id] = upload
            # S3's InvalidPart / MalformedXML, an AwsException: a 500 from the panel.
            raise PanelRefused(500, "CompleteMultipartUpload failed: the parts do not match.")

    def _restore_report(self, backup: str, body: Any) -> None:
        record = self._record(backup)
        if self.flavour == PELICAN:
            self._own(record)
        # $request->boolean('successful'): no validation, anything else is false.
        successful = isinstance(body, dict) and body.get("successful") in (
            True,
            1,
            "1",
            "true",
            "on",
            "yes",
        )
        record.restores.append(successful)

    def part_size(self) -> int:
        configured = self.max_part_size
        if self.flavour == PTERODACTYL:
            return configured if configured is not None and configured > 0 else 5 * GIB
        if configured is None or not 5 * MIB <= configured <= 5 * GIB:
            return 128 * MIB
        return configured

    def _part_urls(self, backup: str, size_text: str) -> dict[str, Any]:
        size = php_int(size_text)
        if size == 0:
            raise PanelRefused(400, 'A non-empty "size" query parameter must be provided.')
        record = self._record(backup)
        self._own(record)
        if record.completed_at is not None:
            raise PanelRefused(409, "This backup is already in a completed state.")
        if record.disk != "s3":
            raise PanelRefused(
                400, "The configured backup adapter is not an S3 compatible adapter."
            )
        part_size = self.part_size()
        count = max(0, math.ceil(size / part_size))
        record.upload_id = uuid.uuid4().hex
        self._uploads[record.upload_id] = _Upload(count)
        urls = [f"{self.url}/s3/{record.upload_id}/{n}" for n in range(1, count + 1)]
        answer: dict[str, Any] = {"parts": urls, "part_size": part_size}
        if self.flavour == PELICAN:
            answer["max_concurrent_uploads"] = 10
        return answer

    async def _put_part(self, request: web.Request) -> web.StreamResponse:
        """A pre-signed UploadPart URL: the body is hashed as it arrives, never kept."""
        m = re.fullmatch(r"/s3/([0-9a-f]+)/(\d+)", request.path)
        upload = self._uploads.get(m.group(1)) if m and request.method == "PUT" else None
        if m is None or upload is None or not 1 <= int(m.group(2)) <= upload.parts:
            return web.Response(status=404, text="<Error><Code>NoSuchUpload</Code></Error>")
        digest = hashlib.md5()
        async for chunk in request.content.iter_chunked(1 << 16):
            digest.update(chunk)
        etag = f'"{digest.hexdigest()}"'
        upload.etags[int(m.group(2))] = etag
        return web.Response(status=200, headers={"ETag": etag})

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reports(self, backup: str | None = None, restore: bool = False) -> list[Recorded]:
        """Backup reports (restore reports with ``restore``) as received, every attempt."""
        suffix = "/restore" if restore else ""
        return [
            r
            for r in self.requests
            if r.method == "POST"
            and r.path.startswith("/api/remote/backups/")
            and r.path.endswith("/restore") == restore
            and (backup is None or r.path == f"/api/remote/backups/{backup}{suffix}")
        ]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 15.0, what: str = "panel requests"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}: {self.requests!r}")  # a hang
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), 0.1)
            except TimeoutError:
                pass

    async def wait_report(
        self, backup: str, count: int = 1, timeout: float = 15.0, restore: bool = False
    ) -> Recorded:
        await self.wait_for(
            lambda: len(self.reports(backup, restore)) >= count, timeout, f"report of {backup}"
        )
        return self.reports(backup, restore)[count - 1]

    # -- the panel as the node's client ---------------------------------------------------------

    def _jwt(self, claims: dict[str, Any], lifetime: int, identified_by: str, scope: str) -> str:
        """``NodeJWTService::handle``: HS256 with the node's token, ``aud`` a list (the panels'
        own claims formatter leaves it so), ``nbf`` 5 minutes back, and ``jti`` also in the
        header; Pterodactyl adds ``user_id``, Pelican the token's ``scope`` instead."""
        now = int(time.time()) + self.clock_skew
        algo = hashlib.md5 if self.flavour == PTERODACTYL else hashlib.sha256
        jti = algo(identified_by.encode()).hexdigest()
        user_id = 1
        payload: dict[str, Any] = {
            "iss": PANEL_APP_URL,
            "aud": [f"http://node.test:{self.port}"],
            "jti": jti,
            "iat": now,
            "nbf": now - 300,
            "exp": now + lifetime,
            **claims,
        }
        if self.flavour == PTERODACTYL:
            payload["user_id"] = user_id
        else:
            payload["scope"] = scope
        payload["unique_id"] = secrets.token_urlsafe(12)[:16]
        return jwt.encode(payload, self.node_token, algorithm="HS256", headers={"jti": jti})

    def download_token(self, server: str, backup: str, user: str | None = None) -> str:
        """``DownloadLinkService`` / ``WingsBackupSchema::getDownloadLink``: 15 minutes."""
        claims = {
            "backup_uuid": backup,
            "server_uuid": server,
            "user_uuid": user or str(uuid.uuid4()),
        }
        return self._jwt(claims, 15 * 60, f"1{server}", "backup-download")

    def websocket_token(
        self, server: str, permissions: list[str] | None = None, user: str | None = None
    ) -> str:
        """``WebsocketController``: 10 minutes, the user's permissions on the server."""
        claims = {
            "server_uuid": server,
            "permissions": permissions if permissions is not None else ["*"],
            "user_uuid": user or str(uuid.uuid4()),
        }
        return self._jwt(claims, 10 * 60, f"1{server}", "websocket")

    def check_node_answer(self, response: aiohttp.ClientResponse) -> None:
        """Pelican's ``enforceValidNodeToken``, applied to every answer of the node: no
        ``User-Agent``, or Pelican Wings' with another token id, is a connection error."""
        header = response.headers.get("User-Agent", "")
        m = re.fullmatch(r"Pelican Wings/v(?:\d+\.\d+\.\d+|develop) \(id:(\w*)\)", header)
        if not header or (m is not None and m.group(1) != self.node_token_id):
            raise NodeConnectionError(f"{response.url} does not match node token_id !")

    async def call_node(
        self, node_url: str, method: str, path: str, json_body: Any = None
    ) -> tuple[int, Any]:
        """A request as the panel's daemon client sends it (bearer: the node's token), the
        answer checked as Pelican checks it; returns the status and the decoded body."""
        headers = {"Authorization": f"Bearer {self.node_token}", "Accept": "application/json"}
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, node_url + path, json=json_body, headers=headers) as r,
        ):
            if self.flavour == PELICAN:
                self.check_node_answer(r)
            text = await r.text()
            return r.status, json.loads(text) if text else None

    async def delete_backup(self, node_url: str, server: str, backup: str) -> None:
        """``WingsBackupSchema::deleteBackup``: a 404 means already gone; other errors raise."""
        status, body = await self.call_node(
            node_url, "DELETE", f"/api/servers/{server}/backup/{backup}"
        )
        if status not in (204, 404):
            raise NodeConnectionError(f"the node answered {status}: {body}")

    async def system_information(self, node_url: str) -> dict[str, Any]:
        """Pelican's ``DaemonSystemRepository::getSystemInformation``."""
        status, body = await self.call_node(node_url, "GET", "/api/system")
        keys = ("architecture", "cpu_count", "kernel_version", "os", "version")
        if status != 200 or not isinstance(body, dict) or not all(k in body for k in keys):
            raise NodeConnectionError(f"{node_url}/api/system is not Pelican Wings !")
        return body

    # -- the node's settings: what the panel pushes when they are saved --------------------------

    def node_configuration(
        self,
        *,
        node_uuid: str,
        port: int,
        data: str,
        fqdn: str = "node.example.com",
        scheme: str = "http",
        behind_proxy: bool = False,
        upload_size: int = 100,
        sftp_port: int = 2022,
    ) -> dict[str, Any]:
        """``Node::getConfiguration`` (app/Models/Node.php, both panels): Wings' whole
        configuration as the panel knows it. ``remote`` is ``route('index')`` (Pterodactyl) or
        ``config('app.url')`` (Pelican): the panel's own URL."""
        return {
            "debug": False,
            "uuid": node_uuid,
            "token_id": self.node_token_id,
            "token": self.node_token,
            "api": {
                "host": "0.0.0.0",
                "port": port,
                "ssl": {
                    "enabled": not behind_proxy and scheme == "https",
                    "cert": f"/etc/letsencrypt/live/{fqdn.lower()}/fullchain.pem",
                    "key": f"/etc/letsencrypt/live/{fqdn.lower()}/privkey.pem",
                },
                "upload_limit": upload_size,
            },
            "system": {"data": data, "sftp": {"bind_port": sftp_port}},
            "allowed_mounts": [],
            "remote": self.url,
        }

    async def save_node(
        self, node_url: str, *, reset_token: bool = False, ssl: Any = None, **settings: Any
    ) -> tuple[int, Any]:
        """An admin saves the node's settings: ``NodeUpdateService::handle`` (both panels;
        Pterodactyl's NodesController calls it on every save, Pelican's EditNode when a field
        that matters changed, and its "reset token" action with ``reset_token``). A reset makes
        a new token and id (``Str::random(64)``, ``Str::random(16)``) and the panel keeps them
        whatever the node answers; the node is called with the token it had (``setNode($node)``:
        the model before the update), the body is the new :meth:`node_configuration` as PHP's
        ``json_encode`` writes it (slashes escaped). Pelican checks the answer's token id against
        the node's id before the reset (``enforceValidNodeToken``). Returns the status and the
        decoded answer."""
        bearer, token_id = self.node_token, self.node_token_id
        if reset_token:
            alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            self.node_token = "".join(secrets.choice(alphabet) for _ in range(64))
            self.node_token_id = "".join(secrets.choice(alphabet) for _ in range(16))
        body = json.dumps(self.node_configuration(**settings)).replace("/", "\\/")
        headers = {
            "Authorization": f"Bearer {bearer}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        async with (
            aiohttp.ClientSession() as s,
            s.post(node_url + "/api/update", data=body, headers=headers, ssl=ssl) as r,
        ):
            if self.flavour == PELICAN:
                header = r.headers.get("User-Agent", "")
                m = re.fullmatch(r"Pelican Wings/v(?:\d+\.\d+\.\d+|develop) \(id:(\w*)\)", header)
                if not header or (m is not None and m.group(1) != token_id):
                    raise NodeConnectionError(f"{r.url} does not match node token_id !")
            text = await r.text()
            return r.status, json.loads(text) if text else None
