"""Payload signing of the parts (``system.backups.s3.payload_signing``), seen on the wire.

A part signed with its SHA-256 carries that digest in ``x-amz-content-sha256``; an unsigned
one carries ``UNSIGNED-PAYLOAD``. The fault proxy in front of moto records the header and the
SHA-256 of the body it really received, over http and, terminating TLS, over https. (moto's
server does not verify signatures, so the proxy's record is the oracle.)"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from bench.tlscert import self_signed_certificate
from tests.support.s3_helpers import SERVER_UUID, FaultProxy, s3_config
from wingsbak.appkeys import JOBS
from wingsbak.config import ConfigError
from wingsbak.daemon import build_app as create_app
from wingsbak.storage.bucket import NodeBucket, describe, endpoint_url, make_client, signs_payload
from wingsbak.storage.select import parse_config

UNSIGNED = "UNSIGNED-PAYLOAD"


@pytest.mark.parametrize(
    ("setting", "endpoint", "signed"),
    [
        ("auto", "http://minio:9000", True),
        ("auto", "HTTP://minio:9000", True),
        ("auto", " http://minio:9000\n", True),  # botocore strips it: so do we
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
    assert endpoint_url(s3_config(" ", "b")) is None


def test_endpoints_from_the_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # Otherwise an empty endpoint ("AWS, over https": unsigned) could reach a plain-http store.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    client = make_client(s3_config("", "b", region="eu-west-1"))
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    client = make_client(s3_config("http://minio:9000", "b"))
    assert client.meta.endpoint_url == "http://minio:9000"


@pytest.mark.parametrize("endpoint", ["ftp://minio:21", "http://minio :9000", "s3:// x"])
def test_an_endpoint_that_is_not_http_is_refused_naming_its_key(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"system\.backups\.s3\.endpoint"):
        parse_config({"system": {"backups": {"s3": {"endpoint": endpoint}}}})


def test_unknown_payload_signing_is_refused_naming_its_key() -> None:
    raw = {"system": {"backups": {"s3": {"payload_signing": "sometimes"}}}}
    with pytest.raises(ConfigError, match=r"system\.backups\.s3\.payload_signing"):
        parse_config(raw)
    with pytest.raises(ConfigError, match=r"system\.backups\.s3\.payload_signing"):
        parse_config({"system": {"backups": {"s3": {"payload_signing": False}}}})


@pytest.fixture(scope="module")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_proxy(
    moto_endpoint: str, tls_certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """The fault proxy terminating TLS in front of moto; boto3 trusts its certificate."""
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls_certificate[0]))
    proxy = FaultProxy(moto_endpoint, tls=tls_certificate)
    yield proxy
    proxy.close()


def upload_and_check(
    proxy: FaultProxy, s3_admin: Any, bucket: str, tree: Path, setting: str
) -> list[str]:
    """Back ``tree`` up through ``proxy``; the x-amz-content-sha256 header of each part
    request, after checking the stored object is what was archived."""
    storage = NodeBucket(s3_config(proxy.endpoint, bucket, payload_signing=setting))
    backup = str(uuid.uuid4())
    result = storage.upload_backup(str(tree), SERVER_UUID, backup)
    body = s3_admin.get_object(Bucket=bucket, Key=f"{SERVER_UUID}/{backup}.tar.gz")["Body"]
    assert hashlib.sha1(body.read()).hexdigest() == result.checksum
    plan = proxy.plan
    assert plan.part_requests >= 4
    assert len(plan.content_sha256) == plan.part_requests
    return [
        "signed" if claimed == plan.body_sha256[number][-1] else claimed
        for number, claimed in plan.content_sha256
    ]


@pytest.mark.parametrize(
    ("setting", "expected"), [("auto", "signed"), ("always", "signed"), ("never", UNSIGNED)]
)
def test_over_http_auto_signs_every_part_with_its_digest(
    fault_proxy: FaultProxy, s3_admin: Any, bucket: str, big_tree: Path, setting: str, expected: str
) -> None:
    headers = upload_and_check(fault_proxy, s3_admin, bucket, big_tree, setting)
    assert set(headers) == {expected}


@pytest.mark.parametrize(
    ("setting", "expected"), [("auto", UNSIGNED), ("always", "signed"), ("never", UNSIGNED)]
)
def test_over_https_auto_leaves_the_parts_to_tls(
    https_proxy: FaultProxy, s3_admin: Any, bucket: str, big_tree: Path, setting: str, expected: str
) -> None:
    assert https_proxy.endpoint.startswith("https://")
    headers = upload_and_check(https_proxy, s3_admin, bucket, big_tree, setting)
    assert set(headers) == {expected}


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


@pytest.mark.parametrize("code", ["InvalidDigest", "XAmzContentSHA256Mismatch", "NotImplemented"])
def test_a_store_refusing_unsigned_parts_gets_a_line_naming_the_setting(code: str) -> None:
    refused = ClientError(
        {"Error": {"Code": code, "Message": "UNSIGNED-PAYLOAD is not allowed"}}, "UploadPart"
    )
    error = describe(refused, "backups", "uploading part 1")
    assert error.code == code
    assert "payload_signing: always" in str(error)
    assert "UNSIGNED-PAYLOAD is not allowed" in str(error)
