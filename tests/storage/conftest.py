"""Fixtures of the S3 tests (defined in s3_fixtures.py, shared with tests/faults)."""

from s3_fixtures import (  # noqa: F401 - imported to register the fixtures
    _proxy_server,
    big_tree,
    bucket,
    fault_proxy,
    moto_endpoint,
    s3_admin,
)
