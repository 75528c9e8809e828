"""A real ``fsd serve`` process and a scripted front-end connected to it."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.serve import ServeProcess


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    path = tmp_path / "shared"
    path.mkdir()
    return path


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fsd-") as d:
        yield Path(d) / "vhost.sock"


@pytest.fixture
def daemon(shared_dir: Path, socket_path: Path) -> Iterator[ServeProcess]:
    serve = ServeProcess(shared_dir, socket_path)
    yield serve
    if serve.proc.poll() is None:
        serve.stop(signal.SIGKILL)


@pytest.fixture
def frontend(daemon: ServeProcess) -> Iterator[VhostUserFrontend]:
    fe = VhostUserFrontend(str(daemon.socket_path))
    yield fe
    if fe.sock.fileno() != -1:
        fe.close()
