"""``fsd serve`` and ``fsd-vhost-user``: a host directory to a VMM as a vhost-user virtio-fs
device, in crosvm's ``device fs`` vocabulary and virtiofsd 1.13's (docs/virtiofsd.md).

``fsd-vhost-user`` is the binary VMM managers launch (libvirt's ``<binary path=...>``,
Kata's ``virtio_fs_daemon``): the same command, starting from virtiofsd's defaults
(:data:`fsd.cli.virtiofsd.VIRTIOFSD_DEFAULTS`) so that a manager written for virtiofsd gets
what it expects. ``fsd serve`` keeps fsd's own defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import grp
import logging
import os
import socket
import stat
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import trio

from fsd.cli import sandboxing
from fsd.cli.arguments import (
    OneLineParser,
    add_filesystem_arguments,
    add_polling_argument,
    check_file_handles,
    check_socket_path,
    count,
    filesystem_options,
    status_config,
)
from fsd.cli.errors import StartupError, report
from fsd.cli.logs import configure_logging
from fsd.cli.process import prepare_process
from fsd.cli.shared_dir import parse_shared_dir
from fsd.cli.version import version_line
from fsd.cli.virtiofsd import (
    REFUSED,
    VIRTIOFSD_DEFAULTS,
    CompatOptions,
    capabilities_json,
    parse_compat_options,
)
from fsd.plugins import PluginError, setup_plugins
from fsd.sandbox import hold_signals

if TYPE_CHECKING:
    from fsd.daemon.serve import ServeConfig
    from fsd.fs.options import FsOptions
    from fsd.plugins import Plugins
    from fsd.sandbox import SandboxConfig

__all__ = ["main", "vhost_user_main"]

log = logging.getLogger("fsd")

Profile = Literal["fsd", "virtiofsd"]


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


def _parser(prog: str, profile: Profile) -> argparse.ArgumentParser:
    defaults = (
        "virtiofsd's defaults: no xattrs, no KILLPRIV_V2, submounts announced, file handles "
        "preferred, 1 s cache lifetime"
        if profile == "virtiofsd"
        else "fsd's defaults: xattrs served, KILLPRIV_V2 granted, O_PATH fds, 5 s cache lifetime"
    )
    p = OneLineParser(
        prog=prog,
        description="Serve SHARED_DIR to a VMM (QEMU, crosvm, cloud-hypervisor) as a vhost-user "
        f"virtio-fs device. Takes crosvm's and virtiofsd's options; starts from {defaults}. "
        "See docs/virtiofsd.md.",
    )
    p.add_argument("-V", "--version", action="version", version=version_line())
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket-path", help="vhost-user Unix socket to listen on")
    where.add_argument("--socket", dest="socket_path", help="old name of --socket-path")
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
        help="host directory to share; also crosvm's SRC:TAG:type=fs:key=value:... form",
    )
    p.add_argument(
        "-o",
        dest="compat",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="virtiofsd's legacy option list (libvirt emits it): source=DIR, cache=auto|always|"
        "none|metadata, xattr, no_xattr, xattrmap=, announce_submounts, [no_]killpriv_v2, "
        "[no_]writeback, [no_]allow_direct_io, flock, posix_lock, loglevel=...",
    )
    p.add_argument("--tag", help="tag in the device config space (for crosvm front-ends)")
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="after the front-end disconnects, wait for the next one (a restarted VMM) instead "
        "of exiting; each starts from an empty table",
    )
    p.add_argument(
        "--thread-pool-size",
        type=count,
        default=0,
        metavar="N",
        help="threads serving the requests, so one waiting on a slow disk holds up only "
        "itself (default 0: each queue's own thread serves its requests, cheaper per request)",
    )
    # Off: under a TCG guest it made no row faster and cost 4-6 % more CPU (a guest's next
    # request comes later than any useful window); docs/performance.md.
    add_polling_argument(p, default=0)
    sandboxing.add_sandbox_arguments(p, default_mode="namespace")
    for flag in ("--migration-mode", "--migration-on-error"):
        p.add_argument(flag, metavar="MODE", help=f"refused: {REFUSED['migration']}")
    for flag in ("--migration-verify-handles", "--migration-confirm-paths"):
        p.add_argument(flag, action="store_true", help=f"refused: {REFUSED['migration']}")
    p.add_argument(
        "--print-capabilities",
        action="store_true",
        help="print the vhost-user back-end capabilities (JSON) and exit",
    )
    p.add_argument("-d", dest="debug", action="store_true", help="same as --log-level debug")
    p.add_argument("-f", dest="foreground", action="store_true", help="no effect (foreground)")
    add_filesystem_arguments(p, default_log_level="info")
    return p


def _refuse_virtiofsd_only(args: argparse.Namespace) -> None:
    """StartupError for virtiofsd options fsd does not implement."""
    for option in (
        "migration_mode",
        "migration_on_error",
        "migration_verify_handles",
        "migration_confirm_paths",
    ):
        if getattr(args, option):
            flag = "--" + option.replace("_", "-")
            raise StartupError(f"{flag}: {REFUSED['migration']}")


def _config(args: argparse.Namespace, compat: CompatOptions, profile: Profile) -> ServeConfig:
    """The ServeConfig the arguments describe; StartupError for anything unusable."""
    from fsd.daemon.serve import ServeConfig
    from fsd.virtio_fs import virtio_fs_device

    _refuse_virtiofsd_only(args)
    if args.shared_dir is not None and compat.source is not None:
        raise StartupError("--shared-dir and -o source= both name the shared directory: use one")
    text = args.shared_dir if args.shared_dir is not None else compat.source
    if text is None:
        raise StartupError("no shared directory: give --shared-dir DIR (or -o source=DIR)")
    if args.socket_path is None and args.fd is None:
        raise StartupError("no vhost-user socket: give --socket-path PATH or --fd N")
    try:
        shared = parse_shared_dir(text)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    option = "--shared-dir" if args.shared_dir is not None else "-o source="
    try:
        shared_is_dir = stat.S_ISDIR(os.stat(shared.path).st_mode)
    except FileNotFoundError:
        raise StartupError(
            f"{option} {shared.path}: no such directory; create it or fix the path"
        ) from None
    except OSError as exc:
        raise StartupError(f"{option} {shared.path}: {exc.strerror}") from None
    if not shared_is_dir:
        raise StartupError(f"{option} {shared.path}: is not a directory")
    if shared.tag and args.tag and shared.tag != args.tag:
        raise StartupError(f"--tag {args.tag!r} disagrees with --shared-dir's tag {shared.tag!r}")
    if args.socket_path is not None:
        check_socket_path("--socket-path", args.socket_path)
    if args.socket_group is not None:
        if args.fd is not None:
            raise StartupError("--socket-group applies to --socket-path, not to --fd")
        try:
            grp.getgrnam(args.socket_group)
        except KeyError:
            raise StartupError(
                f"--socket-group {args.socket_group}: no such group; name an existing group "
                "(getent group lists them)"
            ) from None
    if args.allowlist_socket_path is not None:
        check_socket_path("--allowlist-socket-path", args.allowlist_socket_path)
    defaults = VIRTIOFSD_DEFAULTS if profile == "virtiofsd" else None
    fs_options = filesystem_options(args, [shared.cfg], defaults=defaults, compat=compat)
    check_file_handles(fs_options, shared.path)
    tag = args.tag or shared.tag
    if tag is not None:
        try:
            virtio_fs_device(tag)  # checks the tag's length
        except ValueError as exc:
            raise StartupError(f"--tag {tag!r}: {exc}") from None
    return ServeConfig(
        shared_dir=os.path.abspath(shared.path),
        socket_path=args.socket_path,
        listen_fd=args.fd,
        socket_group=args.socket_group,
        tag=tag,
        allowlist_socket_path=args.allowlist_socket_path,
        fs_options=fs_options,
        thread_pool_size=args.thread_pool_size,
        poll_max_ns=args.poll_max_ns,
        reconnect=args.reconnect,
        status=status_config(args),
    )


def main(argv: Sequence[str], *, profile: Profile = "fsd", prog: str = "fsd serve") -> int:
    """``fsd serve --socket-path S|--fd N --shared-dir D [options]``; ``argv`` excludes the
    command. Exits 2 when it cannot start as asked, 1 when serving fails, 0 after the VMM
    left or a signal.

    The start-up order is the sandbox's (:func:`fsd.sandbox.enter_sandbox`): logging (the
    syslog socket connected), the process prepared, the sockets bound, the plugins loaded
    and configured, then the sandbox, and only then ``trio.run`` and its threads. In
    namespace and chroot modes the sandboxed server is a child process; this one supervises
    it, removes the socket files when it is gone, and exits with its status."""
    from fsd.daemon.serve import bind_listeners, serve

    argv = list(argv)
    if "--print-capabilities" in argv:
        # The vhost-user back-end convention (QEMU docs/interop/vhost-user.rst), for libvirt.
        sys.stdout.write(capabilities_json())
        return 0
    args = _parser(prog, profile).parse_args(argv)
    _make_paths_absolute(args)
    try:
        compat = parse_compat_options(args.compat)
    except StartupError as exc:
        report(prog, str(exc))
        return 2
    level = "debug" if args.debug else compat.log_level or args.log_level
    configure_logging(
        level=level, log_format=args.log_format, syslog=args.syslog, program=prog.split()[0]
    )
    try:
        config = _config(args, compat, profile)
        sandbox_config = sandboxing.sandbox_config(
            args,
            config.shared_dir,
            default_mode="namespace",
            command="serve",
            mode=compat.sandbox,
            modcaps=compat.modcaps,
            file_handles=config.fs_options.inode_file_handles != "never",
        )
        prepare_process(rlimit_nofile=args.rlimit_nofile)
    except StartupError as exc:
        report(prog, str(exc))
        return 2
    hold_signals()  # from here, a signal ends the daemon through its handlers
    try:
        listeners = bind_listeners(config)
    except (OSError, LookupError) as exc:  # a socket that cannot be made
        report(prog, _explain(exc))
        return 1
    launcher = os.getpid()
    try:
        plugins = setup_plugins(args.plugin, args.plugin_cfg)
        sandbox_config = _keep_plugin_paths(sandbox_config, plugins)
        sandbox = sandboxing.enter(sandbox_config, cleanup=listeners.remove)
    except (StartupError, PluginError, sandboxing.SandboxError) as exc:
        report(prog, str(exc))
        if os.getpid() == launcher:  # (not in a sandboxed child: its supervisor cleans up)
            listeners.remove()
        return 2
    if args.foreground:
        log.warning("-f has no effect: fsd always runs in the foreground")
    if args.compat:
        log.info("-o is virtiofsd's legacy form; %s takes the long options too", prog)
    for note in compat.notes:
        log.info("%s", note)
    log.info(
        "serving %s (%s)",
        config.shared_dir,
        _describe(config.fs_options),
        extra={"shared_dir": config.shared_dir, "profile": profile},
    )
    failures: list[BaseException] = []
    try:
        trio.run(
            functools.partial(serve, config, plugins=plugins, listeners=listeners, sandbox=sandbox)
        )
    except* (OSError, LookupError) as group:  # an unusable fs
        failures.extend(group.exceptions)
    finally:
        if not sandbox.supervised:
            listeners.remove()
    for failure in failures:
        report(prog, _explain(failure))
    return 1 if failures else 0


def _make_paths_absolute(args: argparse.Namespace) -> None:
    """Relative paths on the command line, absolute before anything else: the sandbox
    changes the working directory (to the share itself in chroot mode)."""
    for name in ("socket_path", "allowlist_socket_path", "status_socket"):
        value = getattr(args, name)
        if value is not None:
            setattr(args, name, os.path.abspath(value))


def _keep_plugin_paths(config: SandboxConfig, plugins: Plugins) -> SandboxConfig:
    """``config`` with the host paths the plugins declared kept inside (namespace mode)."""
    paths = sandboxing.plugin_paths(plugins, config)
    if paths:
        log.info("sandbox: keeping for plugins: %s", sandboxing.describe(paths))
    return dataclasses.replace(config, extra_paths=tuple(paths))


def _describe(options: FsOptions) -> str:
    """The options that differ from fsd's defaults, for the start-up line."""
    from fsd.fs.options import FsOptions

    default = FsOptions()
    changed = []
    for field in ("cache", "timeout", "readonly", "xattr", "killpriv_v2", "writeback"):
        if getattr(options, field) != getattr(default, field):
            changed.append(f"{field}={getattr(options, field)}")
    for field in ("inode_file_handles", "announce_submounts", "allow_direct_io", "allow_mmap"):
        if getattr(options, field) != getattr(default, field):
            changed.append(f"{field}={getattr(options, field)}")
    if options.xattrmap is not None:
        changed.append("xattrmap")
    if options.id_maps is not None:
        changed.append("id maps")
    return ", ".join(changed) or "fsd's defaults"


def _explain(failure: BaseException) -> str:
    """One line for an error that stopped the daemon, naming the file when there is one."""
    if isinstance(failure, OSError):
        what = failure.strerror or str(failure)
        if failure.filename is not None:
            return f"{os.fsdecode(failure.filename)}: {what}"
        return what
    return str(failure)


def vhost_user_main() -> int:
    """``fsd-vhost-user``: ``fsd serve`` under the name and argument conventions of a vhost-user
    back-end binary (``--socket-path``/``--fd``, ``--print-capabilities``), with virtiofsd's
    defaults, for VMM managers that launch back-ends from a vhost-user JSON description
    (contrib/vhost-user/) or a configured virtiofsd path."""
    return main(sys.argv[1:], profile="virtiofsd", prog="fsd-vhost-user")
