"""Fixtures for plugin tests: a share on a tmp dir, the daemon's umask."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _umask_zero() -> Iterator[None]:
    """The daemon runs with umask 0 (the guest applied its own); so do these tests."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    return root
