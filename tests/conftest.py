"""Fixtures every test directory shares: the host directory fsd serves, the daemon's umask."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer
from fsd.testing.fuse_requests import FuseClient


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """The host directory fsd serves (empty)."""
    root = tmp_path / "share"
    root.mkdir()
    return root


@pytest.fixture
def daemon_umask() -> Iterator[None]:
    """umask 0, as the daemon runs (the client applied its own umask to every mode it sends);
    for tests that serve requests in-process."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def fs(share: Path, daemon_umask: None) -> Iterator[PassthroughFs]:
    """The passthrough filesystem on ``share``, as ``fsd serve`` builds it (no allowlist)."""
    passthrough = PassthroughFs(share, FsOptions())
    yield passthrough
    passthrough.close()


@pytest.fixture
def server(fs: PassthroughFs) -> FuseServer:
    """A FUSE server on ``fs``, driven in-process with request bytes."""
    return FuseServer(fs)


@pytest.fixture
def client(server: FuseServer) -> FuseClient:
    """A client that has INIT'ed ``server``."""
    c = FuseClient(server)
    c.init()
    return c


@pytest.fixture
def fsd_logging() -> Iterator[None]:
    """Put the ``fsd`` logger back as it was, for tests that run a command's ``main``
    in-process (it configures logging for the process)."""
    logger = logging.getLogger("fsd")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate
