"""Fixtures every test folder may use: the node layout, the panel stand-in, the daemon in-process
and as a process (tests/support/daemon_fixtures.py); moto in server mode, a fresh bucket and the
fault proxy in front of moto (tests/support/s3_fixtures.py)."""

pytest_plugins = ("tests.support.daemon_fixtures", "tests.support.s3_fixtures")
