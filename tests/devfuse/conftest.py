"""Fixtures that mount a share through fsd on the host kernel's /dev/fuse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.mount import Mount, devfuse_unavailable, mounted


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
