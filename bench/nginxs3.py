"""nginx as the S3 benchmark's stand-in server: multipart calls answered by its config alone.

Written in C, it takes little of the two cores the backup runs on (a real bucket, on other
machines, takes none of them), where moto or s3rver take more CPU than the archiver itself.

- ``store=True``: each part is stored by nginx's WebDAV module as ``parts/<upload>/<number>``
  (a retried part overwrites its earlier copy), so :func:`stored_object` can put the object
  back together and the benchmark can check its SHA-1 against the backup's report.
- ``store=False``: part bodies are read and discarded (the server's least possible cost).
- ``tls=True``: https with a self-signed certificate for 127.0.0.1, made with ``openssl``;
  clients trust it through ``AWS_CA_BUNDLE`` (:attr:`NginxS3.ca_bundle`). Real S3 endpoints
  are https, and over https the parts go unsigned (``payload_signing: auto``).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.nginx import start_nginx
from bench.tlscert import self_signed_certificate

HTTP = """    map "$request_method:$arg_uploadId:$arg_partNumber" $kind {{
        "~^POST::$" create;
        "~^POST:.+:$" complete;
        "~^PUT:[-0-9a-z]+:[0-9]+$" part;
        default other;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
        {certificates}
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location / {{
            if ($kind = create) {{
                return 200 '<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>
                    <UploadId>u-$request_id</UploadId></InitiateMultipartUploadResult>';
            }}
            if ($kind = part) {{
                {part}
            }}
            if ($kind = complete) {{
                return 200 '<CompleteMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>
                    <ETag>"done"</ETag></CompleteMultipartUploadResult>';
            }}
            return 204;
        }}
        location /parts/ {{
            internal;
            root {tmp}/store;
            dav_methods PUT;
            create_full_put_path on;
            add_header ETag '"$request_id"' always;
        }}
    }}
"""
STORE_PART = "rewrite ^ /parts/$arg_uploadId/$arg_partNumber last;"
DISCARD_PART = """add_header ETag '"$request_id"' always;
                return 200;"""


@dataclass
class NginxS3:
    proc: subprocess.Popen[bytes]
    endpoint: str
    directory: Path
    ca_bundle: str | None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp: Path, *, store: bool, tls: bool) -> NginxS3:
    port = _free_port()
    (tmp / "store" / "parts").mkdir(parents=True, exist_ok=True)
    certificates, ca_bundle = "", None
    if tls:
        cert, key = self_signed_certificate(tmp)
        certificates = f"ssl_certificate {cert}; ssl_certificate_key {key};"
        ca_bundle = str(cert)
    http = HTTP.format(
        tmp=tmp,
        port=port,
        ssl=" ssl" if tls else "",
        certificates=certificates,
        part=STORE_PART if store else DISCARD_PART,
    )
    proc = start_nginx(tmp, port, http)
    scheme = "https" if tls else "http"
    return NginxS3(proc, f"{scheme}://127.0.0.1:{port}", tmp / "store", ca_bundle)


def stored_object(server: NginxS3) -> tuple[int, str, list[int]]:
    """Size, SHA-1 and part numbers of the one upload stored since the last call, whose parts
    are then removed; raises SystemExit unless there is exactly one, with parts 1..n."""
    uploads = sorted((server.directory / "parts").iterdir())
    if len(uploads) != 1:
        raise SystemExit(f"expected one stored upload, found {len(uploads)}")
    parts = sorted(uploads[0].iterdir(), key=lambda p: int(p.name))
    if [int(p.name) for p in parts] != list(range(1, len(parts) + 1)):
        raise SystemExit(f"stored parts are not 1..n: {[p.name for p in parts]}")
    sha1, size = hashlib.sha1(), 0
    for part in parts:
        data = part.read_bytes()
        sha1.update(data)
        size += len(data)
    shutil.rmtree(uploads[0])
    return size, sha1.hexdigest(), [int(p.name) for p in parts]
