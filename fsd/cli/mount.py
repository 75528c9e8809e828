"""``fsd mount SHARED_DIR MOUNTPOINT [options]``: the same FUSE server, mounted on the host
through /dev/fuse (:mod:`fsd.daemon.devfuse`) until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import logging
import os
import time
from collections.abc import Sequence

import trio

from fsd.allowlist.server import bind_allowlist_socket
from fsd.cli import sandboxing
from fsd.cli.arguments import (
    OneLineParser,
    add_filesystem_arguments,
    add_polling_argument,
    check_file_handles,
    check_socket_path,
    filesystem_options,
    positive,
    status_config,
)
from fsd.cli.errors import StartupError, report
from fsd.cli.logs import configure_logging
from fsd.cli.process import prepare_process
from fsd.daemon import mount_syscalls
from fsd.daemon.devfuse import (
    DEV_FUSE,
    FSTYPE,
    MountError,
    check_mountpoint,
    mount_until_signal,
)
from fsd.daemon.fusermount import FuseMount, FuseMountError, mount_fuse, unmount_fuse
from fsd.daemon.polling import DEFAULT_POLL_MAX_NS
from fsd.plugins import PluginError, setup_plugins
from fsd.sandbox import hold_signals
from fsd.status.server import bind_status_socket
from fsd.unix_sockets import Listener

__all__ = ["main", "parser"]

PROG = "fsd mount"

log = logging.getLogger("fsd")


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first plain exception in a (possibly nested) exception group."""
    first: Exception | BaseExceptionGroup[Exception] = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _privilege_hint() -> str:
    """What to do when /dev/fuse or mount(2) is refused to a user who is not root."""
    if os.geteuid() == 0:
        return ""
    return "; fsd mount mounts with mount(2) itself: run it as root"


def _check_dev_fuse() -> None:
    """StartupError, with what to do, if this process cannot open /dev/fuse."""
    if not os.path.exists(DEV_FUSE):
        raise StartupError(f"{DEV_FUSE} does not exist; load the fuse module (modprobe fuse)")
    if not os.access(DEV_FUSE, os.R_OK | os.W_OK):
        raise StartupError(
            f"cannot open {DEV_FUSE}: permission denied; give your user read and write access "
            "to it (mode 0666 on most systems) or run fsd mount as root"
        )


def parser() -> argparse.ArgumentParser:
    """``fsd mount``'s options."""
    p = OneLineParser(
        prog=PROG,
        description="Serve SHARED_DIR on MOUNTPOINT through the host kernel's FUSE (/dev/fuse) "
        "until SIGINT or SIGTERM.",
    )
    p.add_argument("shared_dir", metavar="SHARED_DIR")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_filesystem_arguments(p, default_log_level="info")
    p.add_argument(
        "--threads",
        type=positive,
        default=1,
        metavar="N",
        help="worker threads reading /dev/fuse, each on its own clone of the session's fd "
        "(default 1: cheapest per request; more let requests that wait on the disk overlap)",
    )
    add_polling_argument(p, default=DEFAULT_POLL_MAX_NS)
    sandboxing.add_sandbox_arguments(p, default_mode="namespace")
    return p


def main(argv: Sequence[str]) -> int:
    """Exit 0 after a clean unmount, 2 when the arguments or paths are unusable, 1 when the
    mount or the allowlist socket fails; ``argv`` excludes the command.

    As ``fsd serve`` does, everything that needs the host is done before the sandbox: the
    sockets bound, the plugins configured and the file system mounted (mount(2) as root,
    fusermount3 as a user). The sandboxed server cannot unmount; its supervisor does (root:
    it keeps CAP_SYS_ADMIN for that alone), or for a user the watcher that
    :func:`fsd.daemon.fusermount.mount_fuse` starts with ``auto_unmount``, once the server
    is gone."""
    args = parser().parse_args(list(argv))
    for name in ("allowlist_socket_path", "status_socket"):
        if getattr(args, name) is not None:
            setattr(args, name, os.path.abspath(getattr(args, name)))
    configure_logging(level=args.log_level, log_format=args.log_format, syslog=args.syslog)
    root = os.geteuid() == 0
    try:
        options = filesystem_options(args)
        status = status_config(args)
        shared, target = check_mountpoint(args.shared_dir, args.mountpoint)
        check_file_handles(options, shared)
        if args.allowlist_socket_path is not None:
            check_socket_path("--allowlist-socket-path", args.allowlist_socket_path)
        _check_dev_fuse()
        sandbox_config = sandboxing.sandbox_config(
            args,
            shared,
            default_mode="namespace",
            command="mount",
            file_handles=options.inode_file_handles != "never",
            supervisor_capabilities=frozenset({"SYS_ADMIN"}) if root else frozenset(),
        )
        prepare_process(rlimit_nofile=args.rlimit_nofile)
    except (MountError, StartupError) as e:
        report(PROG, str(e))
        return 2
    hold_signals()  # from here, a signal ends the daemon through its handlers
    listeners: list[Listener] = []
    try:
        if args.allowlist_socket_path is not None:
            listeners.append(bind_allowlist_socket(args.allowlist_socket_path))
        if status.socket_path is not None:
            listeners.append(bind_status_socket(status.socket_path))
    except OSError as exc:
        _remove(listeners)
        report(PROG, _message(exc))
        return 1
    launcher = os.getpid()
    mounted: FuseMount | None = None
    try:
        plugins = setup_plugins(args.plugin, args.plugin_cfg)
        paths = sandboxing.plugin_paths(plugins, sandbox_config)
        sandbox_config = dataclasses.replace(sandbox_config, extra_paths=tuple(paths))
        mounted = mount_fuse(
            shared,
            target,
            allow_other=root,
            auto_unmount=True,  # the server, under seccomp in every mode, runs no helper
        )
        sandbox = sandboxing.enter(
            sandbox_config, cleanup=functools.partial(_cleanup, listeners, mounted)
        )
    except (StartupError, PluginError, sandboxing.SandboxError, FuseMountError) as e:
        report(PROG, _message(e))
        if os.getpid() == launcher:
            _close(listeners, mounted)
            _cleanup(listeners, mounted)
        return 1 if isinstance(e, FuseMountError) else 2
    by_name = {listener.path: listener.sock for listener in listeners}
    failure: Exception | None = None
    try:
        trio.run(
            functools.partial(
                mount_until_signal,
                shared,
                target,
                options,
                args.allowlist_socket_path,
                plugins,
                status,
                mounted=mounted,
                allowlist_listener=by_name.get(args.allowlist_socket_path),
                status_listener=by_name.get(status.socket_path),
                sandbox=sandbox,
                threads=args.threads,
                poll_max_ns=args.poll_max_ns,
            )
        )
    except* (MountError, OSError) as group:  # OSError: the allowlist socket was refused
        failure = _first_leaf(group)
    finally:
        if not sandbox.supervised:
            _close(listeners, mounted)
            _cleanup(listeners, mounted)
    if failure is not None:
        report(PROG, _message(failure))
        return 1
    return 0


def _message(failure: BaseException) -> str:
    message = str(failure)
    if (isinstance(failure, OSError) and failure.errno in (errno.EPERM, errno.EACCES)) or (
        isinstance(failure, (MountError, FuseMountError)) and "not permitted" in message
    ):
        message += _privilege_hint()
    return message


def _remove(listeners: list[Listener]) -> None:
    for listener in listeners:
        listener.remove()
        listener.sock.close()


def _unmounted_within(target: str, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while mount_syscalls.mount_points().get(target, "") == FSTYPE:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _close(listeners: list[Listener], mounted: FuseMount | None) -> None:
    """Close what the server held (unsandboxed): a mount fusermount3 watches goes once the
    watchdog socket closed."""
    for listener in listeners:
        listener.sock.close()
    if mounted is not None and mounted.watchdog is not None:
        os.close(mounted.watchdog)


def _cleanup(listeners: list[Listener], mounted: FuseMount | None) -> None:
    """After the server: remove the socket files and detach the mount (outside the
    sandbox). It touches no fd: the sandbox's supervisor, which runs it, has closed them all
    (a socket object's fd number may be another file's by then)."""
    for listener in listeners:
        listener.remove()
    if mounted is None:
        return
    if mounted.watchdog is not None:
        # The watcher unmounts once the server's end of its pipe closed: the server has
        # exited, so that is under way. The supervisor could not do it itself: it can start
        # no process once the server's pid namespace is gone, nor a setuid one ever.
        if not _unmounted_within(mounted.target, seconds=5.0):
            log.warning("%s is still mounted; fusermount3 -u it", mounted.target)
        return
    if mount_syscalls.mount_points().get(mounted.target, "") != FSTYPE:
        return  # unmounted from outside already
    try:
        unmount_fuse(mounted.target)
    except OSError as exc:
        log.warning("could not unmount %s: %s", mounted.target, exc.strerror)
