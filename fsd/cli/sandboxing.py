"""The command line's side of the sandbox: ``--sandbox``, ``--seccomp`` and ``--modcaps``
(virtiofsd's vocabulary and defaults), the host paths plugins need kept, and entering it.

The order is :func:`fsd.sandbox.enter_sandbox`'s: everything that needs the host's file
system or privileges happens before :func:`enter` (logging set up, the process prepared,
sockets bound, plugins loaded and configured), and nothing starts a thread before it.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from typing import Literal

from fsd.cli.errors import StartupError
from fsd.cli.logs import log_as_pid
from fsd.cli.virtiofsd import SANDBOX_MODES, SECCOMP_ACTIONS
from fsd.daemon import systemd
from fsd.fs import procfd
from fsd.plugins import Plugins
from fsd.sandbox import (
    CapabilityError,
    HostPath,
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxMode,
    SeccompAction,
    enter_sandbox,
    parse_modcaps,
)
from fsd.sandbox.syscalls import allowed

__all__ = [
    "SandboxError",
    "add_sandbox_arguments",
    "describe",
    "enter",
    "plugin_paths",
    "sandbox_config",
]

log = logging.getLogger("fsd")


def add_sandbox_arguments(parser: argparse.ArgumentParser, *, default_mode: str) -> None:
    """``--sandbox``, ``--seccomp`` and ``--modcaps``."""
    parser.add_argument(
        "--sandbox",
        choices=SANDBOX_MODES,
        help=f"confine fsd to the shared directory (default: {default_mode}): namespace "
        "(new mount, pid, network and IPC namespaces, and a user namespace when not root; "
        "nothing of the host but the share is left), chroot (root only, for a container "
        "that forbids namespaces), none (a warning); see docs/security.md",
    )
    parser.add_argument(
        "--seccomp",
        choices=SECCOMP_ACTIONS,
        help="what a system call outside fsd's allowlist does (default: kill): kill the "
        "daemon, log it (the kernel's audit log) and allow it, trap (the Python traceback, "
        "then exit), none (no filter)",
    )
    parser.add_argument(
        "--modcaps",
        metavar="CAPS",
        help="add or remove capabilities from the file server's set, e.g. +sys_admin:-mknod "
        "(CHOWN DAC_OVERRIDE FOWNER FSETID SETGID SETUID MKNOD SETFCAP are kept by default)",
    )


def sandbox_config(
    args: argparse.Namespace,
    shared_dir: str,
    *,
    default_mode: str,
    command: Literal["serve", "mount"],
    mode: str | None = None,
    modcaps: str | None = None,
    file_handles: bool = False,
    supervisor_capabilities: frozenset[str] = frozenset(),
) -> SandboxConfig:
    """The SandboxConfig the arguments ask for ``command`` (whose seccomp allowlist it
    gets); ``mode`` and ``modcaps`` override the arguments (virtiofsd's ``-o`` forms).
    ``file_handles``: the filesystem uses them (``--inode-file-handles``), so the server
    keeps CAP_DAC_READ_SEARCH, which open_by_handle_at needs, as virtiofsd does (a
    ``--modcaps`` that removes it still can: it applies afterwards). StartupError for a bad
    ``--modcaps``."""
    mode = mode or args.sandbox or default_mode
    modcaps = modcaps if modcaps is not None else args.modcaps
    if file_handles:
        modcaps = "+dac_read_search" + (f":{modcaps}" if modcaps else "")
    try:
        parse_modcaps(modcaps)
    except CapabilityError as exc:
        raise StartupError(str(exc)) from None
    return SandboxConfig(
        shared_dir,
        SandboxMode(mode),
        SeccompAction(args.seccomp or "kill"),
        modcaps=modcaps,
        syscalls=allowed(command),
        supervisor_capabilities=supervisor_capabilities,
    )


def plugin_paths(plugins: Plugins, config: SandboxConfig) -> list[HostPath]:
    """The host paths the plugins declared (``fsd_sandbox_paths``), checked against the
    mode: chroot keeps nothing outside the shared directory. StartupError if one cannot be
    kept; PluginError for a plugin that answered nonsense."""
    declared = plugins.sandbox_paths()
    paths: list[HostPath] = []
    share = os.path.realpath(config.shared_dir)
    for name, path in declared:
        if not os.path.exists(path.path):
            raise StartupError(
                f"plugin {name!r} needs {path.path} in the sandbox, and it does not exist; "
                "create it first"
            )
        real = os.path.realpath(path.path)
        if real == share or real.startswith(share.rstrip("/") + "/"):
            continue  # inside the share: there already, read-write
        if config.mode is SandboxMode.CHROOT:
            raise StartupError(
                f"plugin {name!r} needs {path.path}, outside the shared directory, which "
                "--sandbox chroot cannot keep; use --sandbox namespace"
            )
        if share.startswith(real.rstrip("/") + "/"):
            raise StartupError(
                f"plugin {name!r} needs {path.path} in the sandbox, and it holds the shared "
                "directory (the sandbox would hold the host around the share); give the "
                "plugin a directory of its own beside the share, or use --sandbox none"
            )
        paths.append(path)
    return paths


def enter(config: SandboxConfig, cleanup: Callable[[], None] | None) -> Sandbox:
    """Enter the sandbox and reach inodes through the fd directory it kept. In namespace
    and chroot modes this returns in a child process; the parent supervises it and runs
    ``cleanup`` once it exited. Raises SandboxError (in the child too: return a start-up
    status, which the supervisor passes on)."""
    sandbox = enter_sandbox(config, cleanup=cleanup, relay=systemd.notify)
    if sandbox.supervisor is not None:
        systemd.send_notifications_through(sandbox.supervisor.notify)
    procfd.use(sandbox.proc_self_fd)
    log_as_pid(sandbox.host_pid)
    return sandbox


def describe(paths: Sequence[HostPath]) -> str:
    """``/var/log/fsd (rw), /etc/fsd (ro)`` for the log."""
    return ", ".join(f"{p.path} ({'rw' if p.writable else 'ro'})" for p in paths) or "none"
