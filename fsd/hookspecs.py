"""Hook specifications: what an fsd plugin may implement (``from fsd.hookspecs import hookimpl``).

The contract of each hook (when it is called, on which thread, what it may return, what a
failure does) is docs/hooks.md, the one authoritative copy; the docstrings here only say what
each hook is for. tests/plugins/test_plugins_docs.py checks that docs/hooks.md documents every
hook below with its exact signature and calling convention. Writing, packaging and testing a
plugin: docs/plugins.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from fsd.allowlist.handler import AllowlistChange
    from fsd.allowlist.protocol import Response
    from fsd.hookinfo import DaemonInfo, FuseRequestInfo, VmmInfo
    from fsd.plugins import OptionRegistry, PluginConfig
    from fsd.sandbox import HostPath

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "fsd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- Configuration hooks: once at start-up, before anything is served -------------------------


@hookspec(historic=True)
def fsd_addoption(options: OptionRegistry) -> None:
    """Declare this plugin's ``--plugin-cfg NAMESPACE:key=value`` options (docs/hooks.md)."""


@hookspec(historic=True)
def fsd_configure(config: PluginConfig) -> None:
    """Read the option values and get ready to serve, or refuse them (docs/hooks.md)."""


@hookspec
def fsd_sandbox_paths() -> list[HostPath] | None:
    """The host paths this plugin opens after start-up, to be kept in the sandbox (read-only
    or writable) (docs/hooks.md)."""


# --- FUSE hooks: every request, on the thread serving it (the hot path) -----------------------


@hookspec(firstresult=True)
def fsd_fuse_check(request: FuseRequestInfo) -> int | None:
    """Decide whether a FUSE request may run: a positive errno denies it (docs/hooks.md)."""


@hookspec
def fsd_fuse_audit(request: FuseRequestInfo, error: int, bytes_moved: int) -> None:
    """See the outcome of every FUSE request, denied ones included (docs/hooks.md)."""


# --- Allowlist hooks: each AddPaths/RemovePaths on the control socket -------------------------


@hookspec(firstresult=True)
def fsd_allowlist_check(change: AllowlistChange) -> str | None:
    """Decide whether an allowlist change may be applied: a reason string refuses it
    (docs/hooks.md)."""


@hookspec
def fsd_allowlist_audit(change: AllowlistChange, response: Response) -> None:
    """See every decoded allowlist change and the answer its client got (docs/hooks.md)."""


# --- Lifecycle hooks: on the daemon's trio thread ---------------------------------------------


@hookspec
def fsd_daemon_started(daemon: DaemonInfo) -> None:
    """The daemon is listening (``fsd serve``) or mounted (``fsd mount``) (docs/hooks.md)."""


@hookspec
def fsd_vmm_connected(vmm: VmmInfo) -> None:
    """A VMM connected to the vhost-user socket (docs/hooks.md)."""


@hookspec
def fsd_vmm_disconnected(vmm: VmmInfo) -> None:
    """The VMM's connection closed (docs/hooks.md)."""


@hookspec
def fsd_reload() -> None:
    """Reread the configuration: the daemon got SIGHUP (docs/hooks.md)."""


@hookspec
def fsd_daemon_stopping(reason: str) -> None:
    """The daemon is shutting down: flush and close what you hold (docs/hooks.md)."""
