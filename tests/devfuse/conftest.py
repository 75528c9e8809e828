"""Fixtures that mount a share through fsd on the host kernel's /dev/fuse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.mount import Mount, devfuse_unavailable, mounted

_HERE = Path(__file__).parent


@pytest.fixture
def fsd_mount(share: Path, tmp_path: Path) -> Iterator[Mount]:
    """``share`` mounted through fsd; skipped only where mounting cannot work (not root)."""
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with mounted(share, mountpoint) as mount:
        yield mount


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here mounts through /dev/fuse: mark them all ``devfuse``, so that
    ``-m "not devfuse"`` (``make check``) leaves them out even where a file forgot the mark."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.devfuse)
