"""The sandbox changes no answer: every FUSE operation, sent over vhost-user to ``fsd serve
--sandbox none --seccomp none`` and then to ``fsd serve`` in its default namespace sandbox with
seccomp ``trap`` (a call outside the allowlist would end the daemon with a traceback naming
the line), gets the same errno."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.frontend import VhostUserFrontend
from tests.sandbox.every_operation import Daemon, exercise


@pytest.fixture
def place() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fsd-everyop-") as tmp:
        yield Path(tmp)


def run(argv: list[str], place: Path, name: str) -> tuple[dict[str, int], int, str]:
    share = place / name
    share.mkdir()
    socket_path = place / f"{name}.sock"
    daemon = Daemon(
        [*argv, "--socket-path", str(socket_path), "--shared-dir", str(share)],
        socket_path,
        place / f"{name}.log",
    )
    fe = VhostUserFrontend(str(socket_path))
    try:
        results = exercise(fe, share)
    finally:
        fe.close()
        status, log = daemon.wait()
    return results, status, log


@pytest.mark.skipif(os.geteuid() != 0, reason="the namespace sandbox of a root daemon")
def test_every_operation_answers_the_same_in_the_sandbox(place: Path) -> None:
    plain, status, log = run(
        ["-m", "fsd", "serve", "--sandbox", "none", "--seccomp", "none"], place, "plain"
    )
    assert status == 0, log
    sandboxed, status, log = run(["-m", "fsd", "serve", "--seccomp", "trap"], place, "sandboxed")
    assert status == 0, log
    assert "Traceback" not in log and "SIGSYS" not in log, log
    assert "sandbox: namespace" in log
    assert sandboxed == plain
    # Most of them worked: this is a workload, not a list of refusals.
    assert sum(1 for e in plain.values() if e == 0) > 0.8 * len(plain), plain
