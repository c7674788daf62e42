"""Real servers and oracles for the S3 tests: moto in server mode (a separate process speaking
S3 over HTTP), a fault-injecting HTTP proxy in front of it, GNU tar to read archives."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config as BotoConfig

from wingsbak.storage.bucket import S3Config

MIB = 1024 * 1024
SERVER_UUID = "3f0b6a57-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m moto.server`` on a free port of 127.0.0.1, once it answers."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start; see {log_path}") from None
            time.sleep(0.1)


def admin_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


def s3_config(endpoint: str, bucket: str, **overrides: Any) -> S3Config:
    values: dict[str, Any] = {
        "bucket": bucket,
        "region": "us-east-1",
        "endpoint": endpoint,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "path_style": True,
        "part_size": 5 * MIB,
        "concurrency": 3,
        "prefix": "",
    }
    values.update(overrides)
    return S3Config(**values)


@dataclass
class FaultPlan:
    """What the proxy does to the next requests that upload a part."""

    fail_parts: int = 0  # this many UploadPart requests fail...
    mode: str = "500"  # ...with a 500 answer, or "drop": the connection is closed unanswered
    delay: float = 0.0  # seconds each UploadPart waits before being forwarded
    lose_create_answers: int = 0  # this many CreateMultipartUpload reach moto, answer dropped
    part_requests: int = 0
    failed: int = 0
    # (part number, upload id, content-type, content-length, transfer-encoding) per request
    seen: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    bodies: dict[int, list[str]] = field(default_factory=dict)  # part -> sha1 of each attempt
    body_sha256: dict[int, list[str]] = field(default_factory=dict)  # the same, in SHA-256
    # (part number, x-amz-content-sha256 header) per request: its digest, or UNSIGNED-PAYLOAD
    content_sha256: list[tuple[int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # An outage: while set, every request is answered 503 SlowDown-style (ServiceUnavailable),
    # as S3 answers when it cannot serve; each refused one is recorded ("METHOD /path?query").
    outage: bool = False
    refused: list[str] = field(default_factory=list)
    # CompleteMultipartUpload reaches S3, and its answer is held until ``release`` is set:
    # ``completed`` says S3 has completed the upload.
    hold_complete: bool = False
    completed: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def answer_unavailable(handler: BaseHTTPRequestHandler) -> None:
    """Answer as S3 does when it cannot serve at all (an outage)."""
    payload = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
    handler.send_response(503)
    handler.send_header("Content-Type", "application/xml")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(payload)


def answer_internal_error(handler: BaseHTTPRequestHandler) -> None:
    """Answer as S3 does when it fails a request: a 500 with an InternalError body."""
    payload = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
    handler.send_response(500)
    handler.send_header("Content-Type", "application/xml")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


class FaultProxy:
    """An HTTP proxy in front of moto that makes chosen UploadPart requests really fail.

    With ``tls`` (certificate and key files) it speaks https to its clients, as a
    TLS-terminating proxy in front of a store does."""

    def __init__(self, upstream: str, tls: tuple[Path, Path] | None = None) -> None:
        target = urlsplit(upstream)
        self.upstream_host = target.hostname or "127.0.0.1"
        self.upstream_port = target.port or 80
        self.plan = FaultPlan()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
                if proxy.plan.outage:
                    with proxy.plan.lock:
                        proxy.plan.refused.append(f"{self.command} {self.path}")
                    answer_unavailable(self)
                    return
                is_part = self.command == "PUT" and "partNumber" in query and "uploadId" in query
                if is_part and proxy.intercept_part(self, query, body):
                    return
                is_create = self.command == "POST" and "uploads" in query
                is_complete = self.command == "POST" and "uploadId" in query
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=60
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if is_complete and proxy.plan.hold_complete and resp.status == 200:
                        proxy.plan.completed.set()
                        proxy.plan.release.wait(60)
                    if is_create and proxy.plan.lose_create_answers > 0:
                        proxy.plan.lose_create_answers -= 1  # done upstream, answer lost
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.endpoint = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def intercept_part(
        self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], body: bytes
    ) -> bool:
        """Record the part request; answer it with a failure when the plan says so."""
        plan = self.plan
        number = int(query["partNumber"][0])
        with plan.lock:
            plan.part_requests += 1
            plan.seen.append(
                (
                    number,
                    query["uploadId"][0],
                    handler.headers.get("Content-Type", ""),
                    handler.headers.get("Content-Length", ""),
                    handler.headers.get("Transfer-Encoding", ""),
                )
            )
            plan.bodies.setdefault(number, []).append(hashlib.sha1(body).hexdigest())
            plan.body_sha256.setdefault(number, []).append(hashlib.sha256(body).hexdigest())
            plan.content_sha256.append((number, handler.headers.get("x-amz-content-sha256", "")))
            fail = plan.failed < plan.fail_parts
            if fail:
                plan.failed += 1
        if plan.delay:
            time.sleep(plan.delay)
        if not fail:
            return False
        if plan.mode == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return True
        answer_internal_error(handler)
        return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_big_tree(root: Path) -> Path:
    """About 18 MiB, mostly incompressible, so that its archive spans 4 parts of 5 MiB."""
    (root / "world" / "region").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "empty").mkdir()
    for i in range(3):
        (root / "world" / "region" / f"r.{i}.0.mca").write_bytes(os.urandom(6 * MIB))
    (root / "logs" / "latest.log").write_text("[12:00:00] [Server thread/INFO]: Done\n" * 20000)
    (root / "server.properties").write_text("motd=hello\nmax-players=20\n")
    (root / "world" / "level.dat").write_bytes(os.urandom(1000))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha1 of the content (or 'dir'), for comparing restored trees."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha1(Path(p).read_bytes()).hexdigest()
    return out


def extract_with_tar(data: bytes, dest: Path) -> None:
    """GNU tar as the oracle for the archive's bytes."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", "-", "-C", str(dest)], input=data, check=True)
