"""Plugin tests serve requests in-process, as the daemon does: with umask 0."""

import pytest


@pytest.fixture(autouse=True)
def _daemon_umask(daemon_umask: None) -> None:
    pass
