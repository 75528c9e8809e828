"""``fsd mount SHARED_DIR MOUNTPOINT [options]``: the same FUSE server, mounted on the host
through /dev/fuse (:mod:`fsd.daemon.devfuse`) until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import errno
import os
from collections.abc import Sequence

import trio

from fsd.cli.arguments import (
    OneLineParser,
    add_filesystem_arguments,
    check_file_handles,
    check_socket_path,
    filesystem_options,
    status_config,
)
from fsd.cli.errors import StartupError, report
from fsd.cli.logs import configure_logging
from fsd.cli.process import prepare_process
from fsd.daemon.devfuse import DEV_FUSE, MountError, check_mountpoint, mount_until_signal
from fsd.plugins import PluginError, setup_plugins

__all__ = ["main", "parser"]

PROG = "fsd mount"


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
    return p


def main(argv: Sequence[str]) -> int:
    """Exit 0 after a clean unmount, 2 when the arguments or paths are unusable, 1 when the
    mount or the allowlist socket fails; ``argv`` excludes the command."""
    args = parser().parse_args(list(argv))
    configure_logging(level=args.log_level, log_format=args.log_format, syslog=args.syslog)
    try:
        options = filesystem_options(args)
        status = status_config(args)
        shared, target = check_mountpoint(args.shared_dir, args.mountpoint)
        check_file_handles(options, shared)
        if args.allowlist_socket_path is not None:
            check_socket_path("--allowlist-socket-path", args.allowlist_socket_path)
        _check_dev_fuse()
        plugins = setup_plugins(args.plugin, args.plugin_cfg)
        prepare_process(rlimit_nofile=args.rlimit_nofile)
    except (MountError, StartupError, PluginError) as e:
        report(PROG, str(e))
        return 2
    failure: Exception | None = None
    try:
        trio.run(
            mount_until_signal, shared, target, options, args.allowlist_socket_path, plugins, status
        )
    except* (MountError, OSError) as group:  # OSError: the allowlist socket was refused
        failure = _first_leaf(group)
    if failure is not None:
        message = str(failure)
        if (isinstance(failure, OSError) and failure.errno in (errno.EPERM, errno.EACCES)) or (
            isinstance(failure, MountError) and "not permitted" in message
        ):
            message += _privilege_hint()
        report(PROG, message)
        return 1
    return 0
