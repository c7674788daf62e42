"""Payload signing of the parts (``system.backups.s3.payload_signing``), seen on the wire.

A part signed with its SHA-256 carries that digest in ``x-amz-content-sha256``; an unsigned
one carries ``UNSIGNED-PAYLOAD``. moto checks the signature of both."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from s3_helpers import SERVER_UUID, FaultProxy, s3_config

from wingsbak.config import ConfigError, parse_config
from wingsbak.http.app import create_app
from wingsbak.http.state import JOBS
from wingsbak.storage.s3 import S3Storage, endpoint_url, signs_payload

UNSIGNED = "UNSIGNED-PAYLOAD"


@pytest.mark.parametrize(
    ("setting", "endpoint", "signed"),
    [
        ("auto", "http://minio:9000", True),
        ("auto", "HTTP://minio:9000", True),
        ("auto", "https://s3.eu-central-003.backblazeb2.com", False),
        ("auto", "minio.example.com:9000", False),  # no scheme: https
        ("auto", "", False),  # AWS itself, over https
        ("always", "https://s3.wasabisys.com", True),
        ("never", "http://minio:9000", False),
    ],
)
def test_auto_signs_parts_over_plain_http_only(setting: str, endpoint: str, signed: bool) -> None:
    cfg = s3_config(endpoint, "b", payload_signing=setting)
    assert signs_payload(cfg) is signed


def test_endpoint_without_scheme_is_https() -> None:
    assert endpoint_url(s3_config("minio:9000", "b")) == "https://minio:9000"
    assert endpoint_url(s3_config("", "b")) is None


def test_unknown_payload_signing_is_refused_naming_its_key() -> None:
    raw = {"system": {"backups": {"s3": {"payload_signing": "sometimes"}}}}
    with pytest.raises(ConfigError, match=r"system\.backups\.s3\.payload_signing"):
        parse_config(raw)
    with pytest.raises(ConfigError, match=r"system\.backups\.s3\.payload_signing"):
        parse_config({"system": {"backups": {"s3": {"payload_signing": False}}}})


@pytest.mark.parametrize(("setting", "signed"), [("auto", True), ("never", False)])
def test_part_requests_carry_the_payload_digest_only_when_signed(
    fault_proxy: FaultProxy,
    s3_admin: Any,
    bucket: str,
    big_tree: Path,
    setting: str,
    signed: bool,
) -> None:
    # The proxy speaks plain http, so "auto" must sign.
    storage = S3Storage(s3_config(fault_proxy.endpoint, bucket, payload_signing=setting))
    backup = str(uuid.uuid4())
    result = storage.upload_backup(str(big_tree), SERVER_UUID, backup)

    plan = fault_proxy.plan
    assert plan.part_requests >= 4
    assert len(plan.content_sha256) == plan.part_requests
    for number, claimed in plan.content_sha256:
        if signed:
            assert claimed == plan.body_sha256[number][-1]
        else:
            assert claimed == UNSIGNED
    # moto verified the request signatures and kept the very bytes that were archived.
    body = s3_admin.get_object(Bucket=bucket, Key=f"{SERVER_UUID}/{backup}.tar.gz")["Body"]
    assert hashlib.sha1(body.read()).hexdigest() == result.checksum


def test_restore_may_reach_the_nodes_own_endpoint_given_without_scheme(tmp_path: Path) -> None:
    raw = {
        "token": "t" * 32,
        "system": {
            "data": str(tmp_path / "volumes"),
            "backup_directory": str(tmp_path / "backups"),
            "backups": {"s3": {"bucket": "b", "endpoint": "minio.internal:9000"}},
        },
    }
    app = create_app(parse_config(raw))
    assert "minio.internal" in app[JOBS].restore_allowlist()
