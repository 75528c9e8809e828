"""``python -m fsd.testing.run_guest``, the command getting-started.md boots its guest with
(that page's doc test runs it against fsd): a workload's output and exit status come back,
and a missing test guest is one line saying how to build it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from fsd.testing.guest import GuestImage, fsd_env, fsd_serve_command, running_backend


@pytest.mark.guest
async def test_output_and_status_of_the_workload(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> None:
    (shared_dir / "hello.txt").write_text("hello\n")
    socket_path = socket_dir / "fs.sock"
    argv = fsd_serve_command(socket_path, shared_dir)
    async with running_backend(argv, socket_path, log_path=tmp_path / "fsd.log", env=fsd_env()):
        with trio.fail_after(180):
            result = await trio.run_process(
                [sys.executable, "-m", "fsd.testing.run_guest", "--socket-path",
                 str(socket_path), "cat hello.txt; echo from-guest > out.txt; exit 3"],
                capture_stdout=True, capture_stderr=True, check=False, env=fsd_env(),
            )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout == b"hello\n"
    assert (shared_dir / "out.txt").read_text() == "from-guest\n"


def test_a_missing_guest_says_how_to_build_it(tmp_path: Path) -> None:
    env = {**fsd_env(), "FSD_TESTBED_DIR": str(tmp_path / "none")}
    result = subprocess.run(
        [sys.executable, "-m", "fsd.testing.run_guest", "--socket-path", "x", "true"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"run_guest: no test guest at {tmp_path / 'none'}: add --build")
