"""The seccomp allowlist: the system calls a sandboxed fsd makes.

Found by measurement, not by reading code: contrib/measure-sandbox.py runs the test suite,
guest tests included (every ``fsd serve`` and ``fsd mount`` daemon the tests start, with the
first-party plugins, under real guests and the host kernel's FUSE client), attaches
``strace -f -c`` to each daemon at the point where the command line enters the sandbox (just
before ``trio.run``), and writes the union of what they called between the BEGIN/END marks
below, one list per command (``--write`` adds; it never removes). ``--verify`` then runs the
suite again with this filter in ``log`` mode and reports any call the kernel logged as
outside it.

Measured on Debian 12 (glibc 2.36, CPython 3.11, trio 0.35), x86_64. A different C library,
Python or kernel may make other calls for the same work (``clone3`` or ``clone``, ``statx``
or ``newfstatat``): measure there with ``--seccomp log`` and add them.

:data:`ADDED` holds the few calls that are needed but that the suite cannot show, each with
its reason.
"""

from __future__ import annotations

from typing import Final

from fsd.sandbox._linux import CLONE_FS

__all__ = ["ADDED", "ALLOWED", "ALLOWED_WITH", "MOUNT", "SERVE", "allowed"]

SERVE: Final = frozenset(
    (
        # BEGIN SERVE
        "accept4",
        "brk",
        "clock_nanosleep",
        "clone3",
        "close",
        "copy_file_range",
        "epoll_create1",
        "epoll_ctl",
        "epoll_wait",
        "eventfd2",
        "fallocate",
        "fchmod",
        "fchmodat",
        "fchown",
        "fchownat",
        "fcntl",
        "fdatasync",
        "fgetxattr",
        "flistxattr",
        "flock",
        "fremovexattr",
        "fsetxattr",
        "fstatfs",
        "fsync",
        "ftruncate",
        "futex",
        "getdents64",
        "getegid",
        "geteuid",
        "getgroups",
        "getpeername",
        "getpid",
        "getsockname",
        "getsockopt",
        "gettid",
        "ioctl",
        "linkat",
        "lseek",
        "madvise",
        "mkdirat",
        "mknodat",
        "mmap",
        "mprotect",
        "mremap",
        "munmap",
        "newfstatat",
        "openat",
        "prctl",
        "preadv2",
        "prlimit64",
        "pwritev2",
        "read",
        "readlinkat",
        "recvfrom",
        "recvmsg",
        "renameat",
        "renameat2",
        "rseq",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "sendto",
        "set_robust_list",
        "setfsgid",
        "setfsuid",
        "setsockopt",
        "socket",
        "socketpair",
        "statx",
        "symlinkat",
        "syncfs",
        "tgkill",
        "unlink",
        "unlinkat",
        "utimensat",
        "write",
        "writev",
        # END SERVE
    )
)
"""What ``fsd serve`` called (vhost-user, with the allowlist server and plugins)."""

MOUNT: Final = frozenset(
    (
        # BEGIN MOUNT
        "accept4",
        "brk",
        "clock_nanosleep",
        "clone3",
        "close",
        "epoll_create1",
        "epoll_ctl",
        "epoll_wait",
        "eventfd2",
        "fcntl",
        "fgetxattr",
        "futex",
        "getdents64",
        "getegid",
        "geteuid",
        "getgid",
        "getpid",
        "getsockname",
        "getsockopt",
        "gettid",
        "getuid",
        "ioctl",
        "lseek",
        "mmap",
        "mprotect",
        "mremap",
        "munmap",
        "newfstatat",
        "openat",
        "prctl",
        "preadv2",
        "pwritev2",
        "read",
        "readv",
        "recvfrom",
        "recvmsg",
        "renameat",
        "rseq",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "sendto",
        "set_robust_list",
        "setsockopt",
        "socket",
        "socketpair",
        "umount2",
        "unlink",
        "unlinkat",
        "write",
        # END MOUNT
    )
)
"""What ``fsd mount`` called (the same server on /dev/fuse)."""

ADDED: Final = frozenset(
    {
        "exit",  # a thread ending: trio's worker threads, the queue threads at shutdown
        "exit_group",  # the process ending
        "rt_sigreturn",  # returning from any signal handler (SIGTERM, SIGHUP, SIGCHLD)
        "tgkill",  # --seccomp trap: faulthandler re-raises SIGSYS after the tracebacks
        "getpid",  # ... and asks for its own pid to do so
        # The server's line to its supervisor (fsd.sandbox.supervisor.SupervisorChannel):
        # a front-end's socket sent for its pid, which only the host's pid namespace knows.
        "sendmsg",
        # glibc's malloc asks how many CPUs it may run on when many threads allocate at once
        # (a new arena: --thread-pool-size=16 in libvirt's command line).
        "sched_getaffinity",
        # --inode-file-handles (virtiofsd's vocabulary), which landed after the measurement.
        "name_to_handle_at",
        "open_by_handle_at",
        # --posix-acl: a creating call runs with the caller's umask (fsd.fs.umask); see
        # ALLOWED_WITH for the unshare(CLONE_FS) that makes the umask the thread's own.
        "umask",
        # CREATE_SUPP_GROUP: a creating call with the caller's supplementary group, on the
        # serving thread alone (fsd.fs.credentials.set_thread_groups); the file server
        # keeps CAP_SETGID for setfsgid already.
        "setgroups",
    }
)

ALLOWED_WITH: Final = {
    # A serving thread's own umask, for --posix-acl (fsd.fs.umask): CLONE_FS and nothing
    # else, so no namespace can be made (a new user namespace is a large attack surface).
    "unshare": (0, CLONE_FS),
}
"""Calls allowed only when one argument equals a value: name -> (argument index, value)."""


def allowed(command: str = "serve") -> frozenset[str]:
    """The allowlist for ``fsd serve`` or ``fsd mount``: the same file server, so ``mount``
    gets what ``serve`` was seen to need too (the /dev/fuse tests reach fewer operations)."""
    return (SERVE | MOUNT if command == "mount" else SERVE) | ADDED


ALLOWED: Final = allowed("serve")
