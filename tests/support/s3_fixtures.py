"""Fixtures of the S3 tests, shared with tests/faults: one moto server and one fault proxy per
session, a fresh bucket per test (so ``list_multipart_uploads`` sees only that test's
uploads). A conftest imports them to make them available to its folder."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3_helpers import FaultPlan, FaultProxy, admin_client, make_big_tree, start_moto


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, endpoint = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield endpoint
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def s3_admin(moto_endpoint: str) -> Any:
    """A plain boto3 client straight to moto, for the tests' own checks."""
    return admin_client(moto_endpoint)


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"backups-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def _proxy_server(moto_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def fault_proxy(_proxy_server: FaultProxy) -> FaultProxy:
    _proxy_server.plan = FaultPlan()
    return _proxy_server


@pytest.fixture(scope="session")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_big_tree(tmp_path_factory.mktemp("server") / "root")
