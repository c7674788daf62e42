"""The test suite: a package, so that ``tests.support`` is importable from every test folder
(pytest puts the repository root on ``sys.path`` for this package's conftest.py)."""
