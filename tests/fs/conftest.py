"""A passthrough filesystem on a tmp dir, served by a FuseServer, driven by real request bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer
from fsd.testing.fuse_requests import FuseClient


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


@pytest.fixture
def fs(share: Path) -> Iterator[PassthroughFs]:
    passthrough = PassthroughFs(share, FsOptions())
    yield passthrough
    passthrough.close()


@pytest.fixture
def server(fs: PassthroughFs) -> FuseServer:
    return FuseServer(fs)


@pytest.fixture
def client(server: FuseServer) -> FuseClient:
    c = FuseClient(server)
    c.init()
    return c
