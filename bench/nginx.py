"""nginx as the benchmarks run it: one worker, every file it writes under one folder, and a
start that waits for its port and shows the tail of its error log when it fails."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

PREAMBLE = """daemon off;
user {user};
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
"""


def start_nginx(tmp: Path, port: int, http: str) -> subprocess.Popen[bytes]:
    """nginx with ``http`` (directives and ``server`` blocks) inside its ``http`` block, once
    ``port`` accepts connections; SystemExit with its error log if it does not start."""
    binary = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if binary is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    conf = tmp / "nginx.conf"
    # Workers run as the folder's owner, so they may write into it (a 0700 temporary folder).
    # Unless nginx is started as root, the user line only logs a warning.
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf.write_text(PREAMBLE.format(user=user, tmp=tmp) + http + "}\n")
    proc = subprocess.Popen(
        [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    log = tmp / "error.log"
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no error.log)"
    raise SystemExit(f"nginx did not start:\n{tail}")
