"""Filesystem tests serve requests in-process, as the daemon does: with umask 0 (the shared
fixtures ``share``, ``fs``, ``server`` and ``client`` are in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _daemon_umask(daemon_umask: None) -> None:
    pass
