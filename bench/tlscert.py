"""A throwaway self-signed certificate for 127.0.0.1, made with ``openssl``: the benchmarks'
https stand-ins and the tests' TLS-terminating proxy and daemon use it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """``(certificate, key)`` PEM files written into ``directory``, valid one day."""
    if shutil.which("openssl") is None:
        raise FileNotFoundError("openssl is not installed (apt-get install openssl)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
