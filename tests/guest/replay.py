"""Replaying a VMM manager's back-end command line against fsd, with a real guest."""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from fsd.testing.guest import (
    Backend,
    BackendError,
    GuestImage,
    GuestResult,
    fsd_env,
    run_guest,
    running_backend,
)

__all__ = ["FSD_VHOST_USER", "WORKLOAD", "check_share", "outcome", "serve_guest"]

FSD_VHOST_USER = str(Path(sys.executable).with_name("fsd-vhost-user"))

WORKLOAD = r"""
echo "read=$(cat host.txt)"
echo from-guest > guest.txt
mkdir gdir && echo inner > gdir/f
echo "owner=$(stat -c %u:%g guest.txt)"
echo "xattr=$(fsdprobe setxattr guest.txt user.k v)"
echo "list=$(ls | tr '\n' ' ')"
"""


#: Run argv[2:] with the fd argv[1] moved to 3 (dash cannot redirect fds above 9).
_AS_FD_3 = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


async def serve_guest(
    argv: Sequence[str],
    socket_path: Path,
    tmp_path: Path,
    guest_image: GuestImage,
    inherit_listener: bool,
) -> tuple[GuestResult, Backend]:
    """Start ``argv`` (``{fd}`` in it is replaced by 3, the inherited listener), wait until
    it serves, boot the guest, run WORKLOAD."""
    listener = None
    pass_fds: tuple[int, ...] = ()
    command = list(argv)
    if inherit_listener:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_path))
        listener.listen(1)
        fd = listener.fileno()
        pass_fds = (fd,)
        # As libvirt and Kata hand it over: the listener is fd 3 in the daemon.
        command = [sys.executable, "-c", _AS_FD_3, str(fd), *command]
    try:
        log_path = tmp_path / "backend.log"
        async with running_backend(
            command, socket_path, log_path=log_path, env=fsd_env(), pass_fds=pass_fds
        ) as backend:
            await _serving(backend)
            if listener is not None:
                listener.close()  # the daemon holds its own copy now
            result = await run_guest(
                WORKLOAD, socket_path=socket_path, guest_image=guest_image, time_limit=180
            )
            return result, backend
    finally:
        if listener is not None:
            listener.close()


async def _serving(backend: Backend) -> None:
    """Wait until the daemon says it listens (an inherited socket listens before it runs)."""
    with trio.fail_after(20):
        while "vhost-user: listening on" not in backend.log():
            if backend.process.returncode is not None:
                raise BackendError(f"exited {backend.process.returncode}: {backend.log()}")
            await trio.sleep(0.05)


def outcome(result: GuestResult, backend: Backend) -> dict[str, str]:
    assert result.exit_status == 0, f"{result.describe()}\n--- backend ---\n{backend.log()}"
    return dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)


def check_share(share: Path, got: dict[str, str]) -> None:
    """What WORKLOAD did, seen from the guest (``got``) and the host (``share``)."""
    assert got["read"] == "from-host"
    assert (share / "guest.txt").read_text() == "from-guest\n"
    assert (share / "gdir" / "f").read_text() == "inner\n"
    assert got["list"] == "gdir guest.txt host.txt "
