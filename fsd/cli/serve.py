"""``fsd serve`` and ``fsd-vhost-user``: a host directory to a VMM as a vhost-user virtio-fs
device (crosvm ``device fs`` and virtiofsd vocabulary)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence

import trio

from fsd.cli.arguments import add_filesystem_arguments, filesystem_options, status_config
from fsd.cli.process import prepare_process
from fsd.cli.shared_dir import parse_shared_dir
from fsd.cli.version import version_line
from fsd.plugins import PluginError, setup_plugins

__all__ = ["main", "vhost_user_main"]


def _socket_fd(text: str) -> int:
    """``--fd``: an open Unix stream socket this process inherited."""
    try:
        fd = int(text)
        sock = socket.socket(fileno=os.dup(fd))
    except (ValueError, OSError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an open file descriptor") from exc
    with sock:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise argparse.ArgumentTypeError(f"fd {fd} is not a Unix stream socket")
    return fd


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fsd serve",
        description="Serve SHARED_DIR to a VMM (QEMU, crosvm) as a vhost-user virtio-fs device.",
    )
    p.add_argument("-V", "--version", action="version", version=version_line())
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket-path", help="vhost-user Unix socket to listen on")
    where.add_argument(
        "--fd",
        type=_socket_fd,
        help="an inherited vhost-user socket: listening (virtiofsd) or connected (crosvm)",
    )
    p.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="also let GROUP (e.g. the VMM's) connect to --socket-path (mode 0660; default 0600)",
    )
    p.add_argument(
        "--shared-dir",
        required=True,
        help="host directory to share; also crosvm's SRC:TAG:type=fs:key=value:... form",
    )
    p.add_argument("--tag", help="tag in the device config space (for crosvm front-ends)")
    add_filesystem_arguments(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="fsd[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str]) -> int:
    """``fsd serve --socket-path S|--fd N --shared-dir D [options]``; ``argv`` excludes the
    command. Exits 2 on a usage error, 1 when a socket cannot be made, 0 after the VMM left
    or a signal."""
    from fsd.daemon.serve import ServeConfig, serve
    from fsd.virtio_fs import virtio_fs_device

    if "--print-capabilities" in argv:
        # The vhost-user back-end convention (QEMU docs/interop/vhost-user.rst), for libvirt.
        sys.stdout.write(json.dumps({"type": "fs", "features": []}) + "\n")
        return 0
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        shared = parse_shared_dir(args.shared_dir)
        if not os.path.isdir(shared.path):
            parser.error(f"--shared-dir {shared.path!r} is not a directory")
        if shared.tag and args.tag and shared.tag != args.tag:
            parser.error(f"--tag {args.tag!r} disagrees with --shared-dir's tag {shared.tag!r}")
        fs_options = filesystem_options(args, [shared.cfg])
        config = ServeConfig(
            shared_dir=os.path.abspath(shared.path),
            socket_path=args.socket_path,
            listen_fd=args.fd,
            socket_group=args.socket_group,
            tag=args.tag or shared.tag,
            allowlist_socket_path=args.allowlist_socket_path,
            fs_options=fs_options,
            status=status_config(args),
        )
        if config.tag is not None:
            virtio_fs_device(config.tag)  # checks the tag's length
        plugins = setup_plugins(args.plugin, args.plugin_cfg)
    except (ValueError, PluginError) as exc:
        parser.error(str(exc))
    prepare_process()
    failures: list[BaseException] = []
    try:
        trio.run(functools.partial(serve, config, plugins=plugins))
    except* (OSError, KeyError) as group:  # a socket that cannot be made; an unknown group
        failures.extend(group.exceptions)
    for failure in failures:
        logging.getLogger("fsd").error("%s", failure)
    return 1 if failures else 0


def vhost_user_main() -> int:
    """``fsd-vhost-user``: ``fsd serve`` under the name and argument conventions of a vhost-user
    back-end binary (``--socket-path``/``--fd``, ``--print-capabilities``), for VMM managers
    that launch back-ends from a vhost-user JSON description (contrib/vhost-user/)."""
    return main(sys.argv[1:])
