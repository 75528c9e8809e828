"""``fsd mount SHARED_DIR MOUNTPOINT [options]``: the same FUSE server, mounted on the host
through /dev/fuse (:mod:`fsd.daemon.devfuse`) until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from fsd.cli.arguments import add_filesystem_arguments, filesystem_options, status_config
from fsd.cli.process import prepare_process
from fsd.daemon.devfuse import MountError, check_mountpoint, mount_until_signal
from fsd.plugins import PluginError, setup_plugins

__all__ = ["main"]


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first plain exception in a (possibly nested) exception group."""
    first: Exception | BaseExceptionGroup[Exception] = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def main(argv: Sequence[str]) -> int:
    """Exit 0 after a clean unmount, 2 when the arguments or paths are unusable, 1 when the
    mount or the allowlist socket fails; ``argv`` excludes the command."""
    parser = argparse.ArgumentParser(
        prog="fsd mount",
        description="Serve SHARED_DIR on MOUNTPOINT through the host kernel's FUSE (/dev/fuse) "
        "until SIGINT or SIGTERM.",
    )
    parser.add_argument("shared_dir", metavar="SHARED_DIR")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_filesystem_arguments(parser)
    args = parser.parse_args(list(argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="fsd mount: %(message)s")
    try:
        options = filesystem_options(args)
        status = status_config(args)
        shared, target = check_mountpoint(args.shared_dir, args.mountpoint)
        plugins = setup_plugins(args.plugin, args.plugin_cfg)
    except (MountError, ValueError, PluginError) as e:
        print(f"fsd mount: {e}", file=sys.stderr)
        return 2
    prepare_process()
    failure: Exception | None = None
    try:
        trio.run(
            mount_until_signal, shared, target, options, args.allowlist_socket_path, plugins, status
        )
    except* (MountError, OSError) as group:  # OSError: the allowlist socket was refused
        failure = _first_leaf(group)
    if failure is not None:
        print(f"fsd mount: {failure}", file=sys.stderr)
        return 1
    return 0
