"""Process-wide set-up a file server needs, done once by the entry point before ``trio.run``.

As trio's own serve functions do, :func:`fsd.daemon.serve.serve` and
:func:`fsd.daemon.devfuse.serve_mount` leave process-wide state alone. ``fsd serve`` and
``fsd mount`` call :func:`prepare_process` first, and so must any program or test that serves
in-process (:mod:`fsd.testing.mount` does; it puts the state back afterwards).
"""

from __future__ import annotations

import logging
import os
import resource

import attrs

from fsd.cli.errors import StartupError
from fsd.fs.credentials import drop_supplementary_groups

__all__ = ["ProcessState", "prepare_process", "raise_open_files_limit", "set_open_files_limit"]

log = logging.getLogger("fsd")


@attrs.frozen
class ProcessState:
    """What :func:`prepare_process` changed, to put back in a process that goes on with other
    work (tests); a daemon never needs to."""

    umask: int
    groups: tuple[int, ...]

    def restore(self) -> None:
        """Put the umask and the supplementary groups back (the open-files limit stays)."""
        os.umask(self.umask)
        if os.geteuid() == 0 and tuple(os.getgroups()) != self.groups:
            os.setgroups(self.groups)


def prepare_process(*, rlimit_nofile: int | None = None) -> ProcessState:
    """Make this process a file server's; return what it was, for :meth:`ProcessState.restore`.

    * umask 0: the client (the guest kernel, or the host kernel under ``fsd mount``) has
      already applied the caller's umask to the mode of MKNOD/MKDIR/CREATE (fsd does not
      negotiate DONT_MASK), and a second umask here would strip bits the caller asked for;
    * no supplementary groups when running as root: the filesystem switches only fsuid/fsgid
      to the caller's, so the daemon's own groups would grant the guest their access
      (CVE-2022-0358 in virtiofsd);
    * the soft open-files limit raised to the hard one (:func:`raise_open_files_limit`), or
      with ``rlimit_nofile`` (``--rlimit-nofile``) set to it as virtiofsd does: both limits
      N, or left alone for 0.

    Raises StartupError for a limit the system will not give.
    """
    if rlimit_nofile is not None:
        set_open_files_limit(rlimit_nofile)
    state = ProcessState(os.umask(0), tuple(os.getgroups()))
    drop_supplementary_groups()
    if rlimit_nofile is None:
        raise_open_files_limit()
    return state


def set_open_files_limit(limit: int) -> None:
    """``--rlimit-nofile N``: soft and hard RLIMIT_NOFILE to N (virtiofsd's meaning); 0 leaves
    them as they are. StartupError naming the option if the kernel refuses."""
    if limit == 0:
        return
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = None
    if ceiling is not None and limit > ceiling:
        raise StartupError(
            f"--rlimit-nofile {limit}: above the system's ceiling /proc/sys/fs/nr_open "
            f"({ceiling}); ask for less"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except (OSError, ValueError) as exc:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        raise StartupError(
            f"--rlimit-nofile {limit}: cannot set it ({exc}); without root at most the hard "
            f"limit {hard}"
        ) from None


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as virtiofsd does at start-up.

    fsd holds an O_PATH fd for every inode the guest has looked up; with systemd's default
    soft limit of 1024, ``ls -l`` of a large directory would fail with EMFILE. Returns the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
    return soft
