"""The file system a namespace-sandboxed fsd sees: the shared directory and nothing of the host.

In a new mount namespace the process's root becomes a small read-only tmpfs that holds only:

- the shared directory, at its own host path (read-write, with its submounts), so that every
  path the daemon was configured with still means the same thing;
- ``/proc/self/fd``: the daemon's own fd table (a bind of that one directory of a proc mounted
  for the new pid namespace), because fsd reopens inodes through ``/proc/self/fd/N``. No
  other part of proc is reachable (no /proc/sys, no other process);
- read-only, the directories Python loads code from (``sys.path`` and the packages already
  imported), because the standard library, trio and plugins import some modules late;
- read-only or read-write, whatever extra host paths the caller names (a plugin's
  configuration file, a log directory), at their host paths.

The sequence is virtiofsd's (slave propagation, a proc for the pid namespace, pivot_root
with the old root on top of the new one, then detached) with the tmpfs as the new root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from fsd.sandbox import _linux
from fsd.sandbox._linux import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
    mount,
)

__all__ = ["HostPath", "build_root", "code_paths"]

log = logging.getLogger("fsd.sandbox")

_ROOT_OPTIONS: Final = "mode=0755,size=1m,nr_inodes=4096"
_STATVFS_TO_MS: Final = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: _linux.MS_NOATIME,
    os.ST_NODIRATIME: _linux.MS_NODIRATIME,
    os.ST_RELATIME: _linux.MS_RELATIME,
}


@dataclass(frozen=True)
class HostPath:
    """A host file or directory to keep inside the sandbox, at the same path."""

    path: str
    writable: bool = False


def code_paths() -> list[str]:
    """Where Python may load code from later: the existing ``sys.path`` entries, and the
    top-level packages already imported from anywhere else (editable installs).

    Not the working directory that ``python -m`` puts first on ``sys.path`` (it could be
    anything, even /): the packages imported from it are found by the second rule."""
    cwd = os.getcwd()
    paths = {
        os.path.abspath(p)
        for p in sys.path
        if p and os.path.exists(p) and os.path.abspath(p) != cwd
    }
    for module in list(sys.modules.values()):
        location = getattr(module, "__file__", None)
        if not isinstance(location, str) or not os.path.isabs(location):
            continue
        name = getattr(module, "__name__", "")
        depth = name.count(".") + (1 if os.path.basename(location).startswith("__init__.") else 0)
        top = location
        for _ in range(depth):
            top = os.path.dirname(top)
        if not any(_inside(top, p) for p in paths):
            paths.add(top)
    return sorted(paths)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


@dataclass(frozen=True)
class _Bind:
    target: str
    fd: int
    directory: bool
    writable: bool
    recursive: bool


def build_root(shared_dir: str, extra: Sequence[HostPath], code: Iterable[str]) -> None:
    """Make the process's root the tmpfs described above. The caller has unshared the mount
    namespace (and the pid namespace, so that proc shows only this process) and is about to
    drop CAP_SYS_ADMIN; ``shared_dir`` is a canonical absolute path other than /."""
    binds = [_open_bind(HostPath(shared_dir, writable=True), recursive=True)]
    try:
        binds += [_open_bind(p, recursive=False) for p in extra]
        # Never a code path that holds the shared directory (or is /): that is the host.
        binds += [
            _open_bind(HostPath(p), recursive=False)
            for p in code
            if not _inside(shared_dir, os.path.abspath(p))
        ]
        # Our mounts must not reach the host, the host's unmounts may still reach us.
        mount(None, "/", None, MS_REC | MS_SLAVE)
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        proc_fd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        binds.append(_Bind("/proc/self/fd", proc_fd, True, True, False))
        # The new root goes over /proc (nothing is bound from that very directory: a bind
        # through a magic link to a covered directory would get the cover), and the sources
        # are named from here on as entries of our own fd directory, which stays reachable
        # as the working directory.
        root = "/proc"
        mount("fsd-sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, _ROOT_OPTIONS)
        os.fchdir(proc_fd)
        done: list[_Bind] = []
        for bind in sorted(binds, key=lambda b: len(b.target)):
            if any(
                _inside(bind.target, d.target) and (d.writable or not bind.writable) for d in done
            ):
                continue  # already there, through an earlier bind at least as permissive
            _mount_bind(root, bind)
            done.append(bind)
            log.debug("sandbox: %s %s", "rw" if bind.writable else "ro", bind.target)
        os.chdir(root)
        _linux.pivot_root(".", ".")
        _linux.umount2(".", MNT_DETACH)  # the old root, stacked on top of the new one
        os.chdir("/")
        mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    finally:
        for bind in binds:
            os.close(bind.fd)


def _open_bind(path: HostPath, *, recursive: bool) -> _Bind:
    real = os.path.realpath(path.path)
    fd = os.open(real, os.O_PATH | os.O_CLOEXEC)
    return _Bind(
        os.path.abspath(path.path),
        fd,
        stat.S_ISDIR(os.fstat(fd).st_mode),
        path.writable,
        recursive,
    )


def _mount_bind(root: str, bind: _Bind) -> None:
    target = root + bind.target
    if bind.directory:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            with contextlib.suppress(FileExistsError):
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    source = "." if bind.target == "/proc/self/fd" else str(bind.fd)
    mount(source, target, None, MS_BIND | (MS_REC if bind.recursive else 0))
    if bind.writable:
        return
    # Read-only. A bind keeps its source's other flags; in a user namespace some are locked
    # (the remount must repeat them), so carry them over from the source.
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    source_flags = os.statvfs(target).f_flag
    for st_flag, ms_flag in _STATVFS_TO_MS.items():
        if source_flags & st_flag:
            flags |= ms_flag
    mount(None, target, None, flags)
