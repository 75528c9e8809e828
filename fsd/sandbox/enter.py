"""``enter_sandbox``: namespaces or chroot, then capabilities, no_new_privs and seccomp."""

from __future__ import annotations

import enum
import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fsd.sandbox import _linux, capabilities, seccomp
from fsd.sandbox.mounts import HostPath, build_root, code_paths
from fsd.sandbox.preload import preload_late_imports
from fsd.sandbox.seccomp import SeccompAction
from fsd.sandbox.supervisor import Relay, SupervisorChannel, fork_supervised
from fsd.sandbox.syscalls import ALLOWED, ALLOWED_WITH

__all__ = ["Sandbox", "SandboxConfig", "SandboxError", "SandboxMode", "enter_sandbox"]

log = logging.getLogger("fsd.sandbox")


class SandboxMode(enum.Enum):
    NAMESPACE = "namespace"
    CHROOT = "chroot"
    NONE = "none"


class SandboxError(Exception):
    """The sandbox cannot be set up as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class SandboxConfig:
    """What ``--sandbox``, ``--seccomp`` and ``--modcaps`` asked for."""

    shared_dir: str
    mode: SandboxMode = SandboxMode.NAMESPACE
    seccomp: SeccompAction = SeccompAction.KILL
    #: virtiofsd's syntax, e.g. ``+sys_admin:-mknod``.
    modcaps: str | None = None
    #: Host paths kept at their own path in namespace mode (plugin files, a log directory).
    extra_paths: Sequence[HostPath] = ()
    #: Where Python may import code from later (read-only in namespace mode); None: found
    #: from ``sys.path`` and the modules already imported.
    code_paths: Sequence[str] | None = None
    #: The seccomp allowlist (system call names).
    syscalls: frozenset[str] = field(default=ALLOWED)
    #: Capabilities the namespace mode's supervisor keeps for ``cleanup`` (none by default;
    #: ``fsd mount`` would keep SYS_ADMIN to unmount the FUSE mount it made in the host's
    #: mount namespace).
    supervisor_capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Sandbox:
    """The process that returned from :func:`enter_sandbox`, as it now is."""

    mode: SandboxMode
    #: The shared directory's path from inside: unchanged in namespace and none modes,
    #: ``/`` in chroot mode.
    shared_dir: str
    #: pid 1 of a new pid namespace (namespace mode); the host sees it as ``host_pid``.
    pid_namespace: bool
    host_pid: int
    user_namespace: bool
    capabilities: frozenset[str]
    seccomp: seccomp.SeccompFilter | None
    #: An O_PATH fd of this process's own /proc/self/fd directory, opened where that path
    #: still existed (in chroot mode it does not any more): what fsd reaches inodes through
    #: (fsd.fs.procfd.use). The caller owns it.
    proc_self_fd: int = -1
    #: The line to the supervising parent that waits outside (namespace and chroot modes)
    #: and runs the cleanup; None in mode none, where the caller runs its own at exit.
    supervisor: SupervisorChannel | None = None

    @property
    def supervised(self) -> bool:
        return self.supervisor is not None


def enter_sandbox(
    config: SandboxConfig,
    *,
    cleanup: Callable[[], None] | None = None,
    relay: Relay | None = None,
) -> Sandbox:
    """Confine this process as ``config`` says and return in the confined one.

    Call it once, from the main thread, before any other thread exists (before ``trio.run``,
    before a plugin could start one), after everything that needs the host's file system or
    privileges: binding the vhost-user and allowlist sockets, opening log files, loading
    plugins, and the process set-up (umask, supplementary groups, rlimits).

    Namespace and chroot modes fork: the caller's process becomes a supervisor that never
    returns from here (it forwards signals, waits, runs ``cleanup`` when the server has
    exited, and exits with the server's status); the child returns, in namespace mode as
    pid 1 of a new pid namespace. ``cleanup`` runs outside the sandbox, where the host's
    paths (socket files to remove) still exist. Mode none does not fork and ignores
    ``cleanup`` (the caller runs its own at exit). ``relay`` (systemd's ``notify``) is what
    the supervisor calls with the notifications the server sends through
    :attr:`Sandbox.supervisor`.

    Raises :class:`SandboxError` with a message for the user when the sandbox cannot be set
    up; that may happen in the child, which then exits with status 1 after the caller has
    logged it, and the supervisor exits 1 too.
    """
    _check_single_threaded()
    shared_dir = _shared_dir(config.shared_dir)
    try:
        keep = capabilities.parse_modcaps(config.modcaps)
    except capabilities.CapabilityError as exc:
        raise SandboxError(str(exc)) from None
    unknown = config.supervisor_capabilities - set(capabilities.CAPABILITIES)
    if unknown:
        raise SandboxError(f"sandbox: unknown capabilities {', '.join(sorted(unknown))}")
    for extra in config.extra_paths:
        if not os.path.exists(extra.path):
            raise SandboxError(f"sandbox: {extra.path}, to be kept inside, does not exist")
        if shared_dir.startswith(os.path.realpath(extra.path).rstrip("/") + "/"):
            raise SandboxError(f"sandbox: {extra.path} holds the shared directory: not kept")
    code = list(code_paths() if config.code_paths is None else config.code_paths)
    preload_late_imports()
    if config.seccomp is not SeccompAction.NONE:
        try:
            seccomp.load_library()  # no library can be loaded once inside
        except OSError as exc:
            raise SandboxError(str(exc)) from None
    unprivileged = os.geteuid() != 0
    if config.mode is SandboxMode.CHROOT and not _capable("SYS_CHROOT"):
        raise SandboxError(
            "sandbox: chroot mode needs root (CAP_SYS_CHROOT); unprivileged, use --sandbox "
            "namespace"
        )
    host_pid = os.getpid()
    supervisor = None
    drop = functools.partial(_drop_privileges, config.supervisor_capabilities)
    match config.mode:
        case SandboxMode.NAMESPACE:
            supervisor, host_pid = _enter_namespaces(
                shared_dir,
                config,
                code,
                unprivileged,
                functools.partial(fork_supervised, cleanup, drop, relay),
            )
            proc_self_fd = _open_proc_self_fd()  # ours, inside the new root
        case SandboxMode.CHROOT:
            supervisor = fork_supervised(cleanup, drop, relay)
            host_pid = os.getpid()
            proc_self_fd = _enter_chroot(shared_dir)
            shared_dir = "/"
        case SandboxMode.NONE:
            log.warning(
                "sandbox: none: fsd sees the whole host file system; a flaw in it is not "
                "contained (use --sandbox namespace, or chroot inside a container)"
            )
            proc_self_fd = _open_proc_self_fd()
    try:
        kept = capabilities.drop_capabilities(keep)
        capabilities.set_no_new_privs()
        installed = seccomp.install_filter(config.seccomp, config.syscalls, ALLOWED_WITH)
    except OSError as exc:
        raise SandboxError(f"sandbox: {exc}") from None
    sandbox = Sandbox(
        mode=config.mode,
        shared_dir=shared_dir,
        pid_namespace=config.mode is SandboxMode.NAMESPACE,
        host_pid=host_pid,
        user_namespace=config.mode is SandboxMode.NAMESPACE and unprivileged,
        capabilities=kept,
        seccomp=installed,
        proc_self_fd=proc_self_fd,
        supervisor=supervisor,
    )
    log.info(
        "sandbox: %s (host pid %d%s); capabilities: %s; seccomp: %s",
        config.mode.value,
        host_pid,
        ", user namespace" if sandbox.user_namespace else "",
        ",".join(sorted(kept)) or "none",
        f"{config.seccomp.value}, {len(installed.allowed)} system calls allowed"
        if installed
        else "none",
    )
    return sandbox


def _check_single_threaded() -> None:
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = threading.active_count()
    if threads > 1 or threading.active_count() > 1:
        raise SandboxError(
            f"sandbox: {threads} threads are running; the sandbox must be entered before any "
            "thread starts (before trio.run), or the others would escape it"
        )


def _shared_dir(path: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise SandboxError(f"sandbox: the shared directory {path!r} is not a directory")
    if real == "/":
        raise SandboxError("sandbox: sharing / leaves nothing to sandbox; use --sandbox none")
    if real == "/proc" or real.startswith("/proc/"):
        raise SandboxError(f"sandbox: cannot share {real}: the sandbox builds its root there")
    return real


def _enter_namespaces(
    shared_dir: str,
    config: SandboxConfig,
    code: Sequence[str],
    unprivileged: bool,
    fork: Callable[[], SupervisorChannel],
) -> tuple[SupervisorChannel, int]:
    """Fork into new pid, mount, network and IPC namespaces (and a user namespace when not
    root) and pivot into the tmpfs root; returns, in the server, its line to the supervisor
    and its host pid."""
    uid, gid = os.geteuid(), os.getegid()
    # The pid namespace (and the user namespace that must own it for the child to mount a
    # proc) is unshared by the parent, since it applies to children only; the rest by the
    # child, so that the parent keeps the host's mounts for its cleanup.
    first = _linux.CLONE_NEWPID | (_linux.CLONE_NEWUSER if unprivileged else 0)
    try:
        _linux.unshare(first)
    except OSError as exc:
        raise SandboxError(
            f"sandbox: cannot create namespaces ({exc}); inside a container that forbids "
            "them use --sandbox chroot (as root) or --sandbox none"
        ) from None
    supervisor = fork()
    # The server, pid 1 of the new pid namespace.
    host_pid = _host_pid()
    try:
        if unprivileged:
            _map_ids(uid, gid)
        _linux.unshare(_linux.CLONE_NEWNS | _linux.CLONE_NEWNET | _linux.CLONE_NEWIPC)
        build_root(shared_dir, config.extra_paths, code)
    except OSError as exc:
        raise SandboxError(f"sandbox: cannot build the namespace sandbox: {exc}") from None
    return supervisor, host_pid


def _host_pid() -> int:
    """This process's pid in the host's pid namespace (the first of /proc's NSpid)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[1])
    return os.getpid()


def _map_ids(uid: int, gid: int) -> None:
    """In a new user namespace: map our own uid and gid to themselves (nothing else can be
    mapped without a setuid helper), after refusing setgroups as the kernel requires."""
    for name, text in (
        ("setgroups", "deny\n"),
        ("uid_map", f"{uid} {uid} 1\n"),
        ("gid_map", f"{gid} {gid} 1\n"),
    ):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _capable(name: str) -> bool:
    effective, _, _ = _linux.capget()
    return bool(effective >> capabilities.CAPABILITIES.index(name) & 1)


def _open_proc_self_fd() -> int:
    try:
        return os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"sandbox: cannot open /proc/self/fd: {exc.strerror}") from None


def _enter_chroot(shared_dir: str) -> int:
    """In the supervised child: chroot into the shared directory, keeping an fd of the
    child's own /proc/self/fd (opened first: the path is gone after the chroot)."""
    proc_self_fd = _open_proc_self_fd()
    try:
        os.chroot(shared_dir)
        os.chdir("/")
    except OSError as exc:
        os.close(proc_self_fd)
        raise SandboxError(
            f"sandbox: chroot into {shared_dir} failed ({exc}); chroot mode needs root "
            "(CAP_SYS_CHROOT); unprivileged, use --sandbox namespace"
        ) from None
    return proc_self_fd


def _drop_privileges(keep: frozenset[str]) -> None:
    capabilities.drop_capabilities(keep)
    capabilities.set_no_new_privs()
