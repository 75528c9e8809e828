"""Mounting /dev/fuse as root (mount(2)) or as an ordinary user (the setuid ``fusermount3``).

mount(2) of a FUSE file system needs CAP_SYS_ADMIN. Every libfuse file system mounted by an
ordinary user goes through ``fusermount3`` instead, a small setuid-root helper from the fuse3
package; fsd does what libfuse's lib/mount.c does:

- try mount(2) first (root, or CAP_SYS_ADMIN in a user namespace); on EPERM or when the
  caller cannot open /dev/fuse itself, fall back to the helper;
- create a Unix socketpair, start ``fusermount3 -o OPTIONS -- MOUNTPOINT`` with one end
  inherited and its fd number in ``$_FUSE_COMMFD``; the helper opens /dev/fuse *with the
  caller's rights*, mounts it with ``fd=N,rootmode=...,user_id=UID,group_id=GID`` added to
  the options, sends the open /dev/fuse fd back over the socket (SCM_RIGHTS, with one byte
  of data) and exits;
- unmount with umount2(MNT_DETACH) when permitted, else ``fusermount3 -u -q -z``; or, with
  ``auto_unmount`` (what a sandboxed daemon, which can run no helper, asks for), a watcher
  started before the sandbox runs ``fusermount3 -u`` once the daemon's end of a pipe closes,
  when it exits or dies. (fusermount3's own ``-o auto_unmount`` cannot do it for a mount
  without ``allow_other``: before it unmounts, it opens the mount point to check that the
  file system is dead, and the kernel refuses that open to the setuid helper, whose
  effective uid is not the mount's owner, with EACCES rather than ENOTCONN.)

The helper enforces the rules for users: the mount point must be writable by the caller,
the mount is always nosuid,nodev, and ``allow_other`` (other users, root included, may use
the mount) is refused unless /etc/fuse.conf has a line ``user_allow_other``. fsd checks that
rule itself first, so that the refusal names fsd's option and the file to change.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Sequence

from fsd.daemon import mount_syscalls

__all__ = [
    "DEV_FUSE",
    "FUSE_CONF",
    "FuseMount",
    "FuseMountError",
    "allows_other_users",
    "find_fusermount",
    "fusermount_options",
    "mount_fuse",
    "open_fuse_mount",
    "unmount_fuse",
]

DEV_FUSE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"
_HELPER = "fusermount3"
_HELPER_DIRS = ("/usr/bin", "/bin")


class FuseMountError(Exception):
    """The mount could not be made; the message says what failed and what to do."""


@dataclasses.dataclass
class FuseMount:
    """A FUSE mount made for this process: the /dev/fuse fd serving it, and how it goes."""

    fd: int
    target: str
    #: Mounted by fusermount3 with ``auto_unmount``: the write end of the pipe a watcher
    #: reads; it unmounts once every copy of this fd is closed (None: mounted by mount(2),
    #: or no auto_unmount asked for).
    watchdog: int | None = None


def allows_other_users(conf_text: str) -> bool:
    """Whether a fuse.conf text has ``user_allow_other`` on a line of its own (comments from
    ``#`` and surrounding blanks stripped), as fusermount3 reads it."""
    return any(
        line.split("#", 1)[0].strip() == "user_allow_other" for line in conf_text.splitlines()
    )


def _read_fuse_conf() -> str:
    try:
        with open(FUSE_CONF, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _escape(value: str) -> str:
    """A value for fusermount3's comma-separated options: backslash before ``\\`` and ``,``."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def fusermount_options(
    source: str, subtype: str, *, allow_other: bool, default_permissions: bool
) -> str:
    """The ``-o`` string for fusermount3: mount flags, the kernel options, and the source and
    type shown in /proc/mounts (``fsname=SOURCE``, type ``fuse.SUBTYPE``). fusermount3 adds
    ``fd=``, ``rootmode=``, ``user_id=`` and ``group_id=`` itself."""
    options = ["rw", "nosuid", "nodev", f"fsname={_escape(source)}", f"subtype={_escape(subtype)}"]
    if default_permissions:
        options.append("default_permissions")
    if allow_other:
        options.append("allow_other")
    return ",".join(options)


def find_fusermount() -> str | None:
    """The fusermount3 helper: the fuse3 package's own, else the first on $PATH."""
    for directory in _HELPER_DIRS:
        path = os.path.join(directory, _HELPER)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(_HELPER)


def open_fuse_mount(
    source: str,
    target: str,
    *,
    subtype: str = "fsd",
    allow_other: bool,
    default_permissions: bool = True,
) -> int:
    """Mount a FUSE file system of type ``fuse.SUBTYPE`` showing ``source`` on ``target`` and
    return the /dev/fuse fd that serves it (close-on-exec, non-blocking).

    Root (or anyone mount(2) lets through) mounts directly; an ordinary user through
    fusermount3. Raises :class:`FuseMountError` with a message naming what to do.
    """
    return mount_fuse(
        source,
        target,
        subtype=subtype,
        allow_other=allow_other,
        default_permissions=default_permissions,
    ).fd


def mount_fuse(
    source: str,
    target: str,
    *,
    subtype: str = "fsd",
    allow_other: bool,
    default_permissions: bool = True,
    auto_unmount: bool = False,
) -> FuseMount:
    """:func:`open_fuse_mount`, telling how the mount was made; with ``auto_unmount``, a
    mount by fusermount3 is removed by the helper once this process (and any child it forks)
    has closed :attr:`FuseMount.watchdog`."""
    fd: int | None = None
    try:
        fd = os.open(DEV_FUSE, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if os.geteuid() == 0 or exc.errno not in (errno.EACCES, errno.EPERM):
            raise FuseMountError(_dev_fuse_hint(exc)) from None
    if fd is not None:
        flags = [f"rootmode={stat.S_IFDIR:o}", f"user_id={os.getuid()}", f"group_id={os.getgid()}"]
        if allow_other:
            flags.append("allow_other")
        if default_permissions:
            flags.append("default_permissions")
        data = ",".join([f"fd={fd}", *flags])
        try:
            mount_syscalls.mount(
                source,
                target,
                f"fuse.{subtype}",
                mount_syscalls.MS_NOSUID | mount_syscalls.MS_NODEV,
                data,
            )
        except OSError as exc:
            os.close(fd)
            if exc.errno != errno.EPERM or os.geteuid() == 0:
                raise FuseMountError(f"cannot mount on {target!r}: {exc.strerror}") from None
        else:
            return FuseMount(fd, target)
    return _mount_with_helper(
        source, target, subtype, allow_other, default_permissions, auto_unmount
    )


def _dev_fuse_hint(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENODEV):
        return f"cannot open {DEV_FUSE}: {exc.strerror} (load the fuse module: modprobe fuse)"
    return f"cannot open {DEV_FUSE}: {exc.strerror}"


def _mount_with_helper(
    source: str,
    target: str,
    subtype: str,
    allow_other: bool,
    default_permissions: bool,
    auto_unmount: bool,
) -> FuseMount:
    if allow_other and not allows_other_users(_read_fuse_conf()):
        raise FuseMountError(
            "allow_other (other users may use the mount) is refused to users other than root "
            f"unless {FUSE_CONF} has a line 'user_allow_other'"
        )
    helper = find_fusermount()
    if helper is None:
        raise FuseMountError(
            f"mounting as an ordinary user needs the setuid {_HELPER} helper (Debian: apt "
            "install fuse3), or run as root"
        )
    options = fusermount_options(
        source, subtype, allow_other=allow_other, default_permissions=default_permissions
    )
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            process = subprocess.Popen(
                [helper, "-o", options, "--", target],
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        finally:
            theirs.close()
        fd = _receive_fd(ours)
        _, stderr = process.communicate()
    except BaseException:
        ours.close()
        raise
    ours.close()
    message = stderr.decode(errors="replace").strip()
    if fd is None or process.returncode != 0:
        if fd is not None:
            os.close(fd)
        raise FuseMountError(_helper_failure(helper, target, process.returncode, message))
    os.set_inheritable(fd, False)
    os.set_blocking(fd, False)
    watchdog = _unmount_when_closed(helper, target) if auto_unmount else None
    return FuseMount(fd, target, watchdog=watchdog)


#: The watcher: wait for end of file on stdin (every copy of the pipe's write end closed),
#: then unmount. A shell, so that it costs no Python start-up and holds nothing of ours.
_WATCHER = 'cat >/dev/null; exec "$0" -u -q -z -- "$1"'


def _unmount_when_closed(helper: str, target: str) -> int:
    """Start the watcher that unmounts ``target`` once the returned fd (the write end of its
    stdin) is closed everywhere. It runs in its own session: a terminal's ^C reaches the
    daemon, not it."""
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen(
            ["/bin/sh", "-c", _WATCHER, helper, target],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return write_end


def _receive_fd(sock: socket.socket) -> int | None:
    """The fd fusermount3 sends (one byte of data, SCM_RIGHTS); None if it closed the socket
    without one. Any extra fds are closed."""
    item = array.array("i").itemsize
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(4 * item))
            break
        except InterruptedError:
            continue
    received: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % item])
            received.extend(fds)
    if not data or not received:
        for extra in received:
            os.close(extra)
        return None
    for extra in received[1:]:
        os.close(extra)
    return received[0]


def _helper_failure(helper: str, target: str, returncode: int | None, message: str) -> str:
    for prefix in (f"{helper}: ", f"{_HELPER}: "):  # fusermount3 names itself by its argv[0]
        message = message.removeprefix(prefix)
    text = message or f"{helper} exited with status {returncode}"
    hint = ""
    if DEV_FUSE in message and ("Permission denied" in message or "denied" in message):
        hint = f" ({DEV_FUSE} must be readable and writable by you: mode 0666 on most systems)"
    return f"cannot mount on {target!r} through {_HELPER}: {text}{hint}"


def unmount_fuse(target: str, *, helper_args: Sequence[str] = ("-u", "-q", "-z")) -> None:
    """Detach the FUSE mount at ``target``: umount2(MNT_DETACH) when permitted (root), else
    ``fusermount3 -u -q -z``, which lets a user remove a FUSE mount that user made. Raises
    OSError naming what failed."""
    try:
        mount_syscalls.umount(target)
        return
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise
    helper = find_fusermount()
    if helper is None:
        raise OSError(errno.EPERM, f"not permitted to unmount, and no {_HELPER}", target)
    result = subprocess.run(
        [helper, *helper_args, "--", target],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = result.stderr.strip() or f"{helper} exited with status {result.returncode}"
        raise OSError(errno.EPERM, reason, target)
