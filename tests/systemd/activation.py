"""Starting a process the way systemd starts a socket-activated service, for tests."""

from __future__ import annotations

import fcntl
import socket

__all__ = ["activated", "high_fd"]


def activated(argv: list[str], fds: list[int], env: dict[str, str]) -> list[str]:
    """The command line that runs ``argv`` as systemd would after a ``.socket`` unit fired:
    ``fds`` (open here, to be given to Popen's ``pass_fds``) become 3, 4, ... and
    ``LISTEN_PID`` is the pid that execs ``argv``, known only in the child: hence a shell,
    bash because dash cannot name fds above 9. Sets ``LISTEN_FDS`` in ``env``."""
    moves = " ".join(f"{3 + i}<&{fd} {fd}<&-" for i, fd in enumerate(fds))
    env["LISTEN_FDS"] = str(len(fds))
    return ["/bin/bash", "-c", f'export LISTEN_PID=$$; exec "$@" {moves}', "sh", *argv]


def high_fd(sock: socket.socket) -> int:
    """A duplicate of ``sock``'s fd numbered 10 or above, clear of the 3, 4, ... it is to be
    moved to."""
    return fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
