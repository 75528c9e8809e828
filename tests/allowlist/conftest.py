"""Fixtures for allowlist socket tests: short socket paths and a running server."""

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from fsd.allowlist.server import serve_allowlist
from fsd.allowlist.trie import Allowlist


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory: AF_UNIX paths must fit in 108 bytes, pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="fsd-al-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def allowlist() -> Allowlist:
    return Allowlist()


@pytest.fixture
async def control_socket(
    socket_dir: Path, allowlist: Allowlist, nursery: trio.Nursery
) -> AsyncIterator[str]:
    """The path of a live control socket serving ``allowlist``."""
    path: str = await nursery.start(serve_allowlist, socket_dir / "ctrl.sock", allowlist)
    yield path
    nursery.cancel_scope.cancel()
