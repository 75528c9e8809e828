"""Test a plugin without a VM: real FUSE requests, or a real mount, with your plugin loaded.

Three levels, from fastest to most realistic::

    plugins = plugin_manager(MyPlugin(), options={"my-plugin": {"key": "value"}})

    with hooked_client(share, MyPlugin()) as client:       # FUSE request bytes, no kernel
        assert client.errno_of(lookup(client.next_unique(), 1, "secret")) == errno.EACCES

    with mounted_with_plugins(share, MyPlugin()) as mount:  # the host kernel's FUSE (root)
        open(mount.mountpoint / "secret")                   # -> PermissionError

:class:`Recorder` is a plugin that remembers every hook call, to assert on what was seen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fsd.cli.process import prepare_process
from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse.server import FuseServer, Transport
from fsd.hookinfo import DaemonInfo, FuseRequestInfo, VmmInfo
from fsd.hooks_fuse import HookedHandler
from fsd.hookspecs import hookimpl
from fsd.plugins import Plugins
from fsd.testing.fuse_requests import FuseClient
from fsd.testing.mount import Mount, mounted

__all__ = ["Recorder", "hooked_client", "mounted_with_plugins", "plugin_manager"]


def plugin_manager(
    *plugins: object, options: Mapping[str, Mapping[str, str]] | None = None
) -> Plugins:
    """A :class:`~fsd.plugins.Plugins` with ``plugins`` registered and configured.

    ``options`` are what ``--plugin-cfg`` would give: ``{"namespace": {"key": "value"}}``.
    Raises :class:`~fsd.plugins.PluginError` as the daemon would at startup.
    """
    manager = Plugins()
    for plugin in plugins:
        manager.register(plugin)
    manager.configure(options)
    return manager


def _as_manager(plugins: tuple[object, ...]) -> Plugins:
    if len(plugins) == 1 and isinstance(plugins[0], Plugins):
        return plugins[0]
    return plugin_manager(*plugins)


@contextlib.contextmanager
def hooked_client(
    share: str | os.PathLike[str],
    *plugins: object,
    transport: Transport = "vhost-user",
    options: FsOptions | None = None,
) -> Iterator[FuseClient]:
    """A :class:`FuseClient` (INIT done) talking to the hooked server on ``share``.

    ``plugins`` are plugin objects, or one ready :class:`~fsd.plugins.Plugins`. The process
    is set up as the daemon's meanwhile (:func:`~fsd.cli.process.prepare_process`: umask 0).
    """
    manager = _as_manager(plugins)
    fs = PassthroughFs(share, options or FsOptions())
    process = prepare_process()
    try:
        client = FuseClient(HookedHandler(FuseServer(fs, transport=transport), manager))
        client.init()
        yield client
    finally:
        process.restore()
        fs.close()


@contextlib.contextmanager
def mounted_with_plugins(
    share: str | os.PathLike[str],
    *plugins: object,
    mountpoint: str | os.PathLike[str] | None = None,
    options: FsOptions | None = None,
) -> Iterator[Mount]:
    """``share`` mounted through fsd's /dev/fuse transport with ``plugins`` hooked in.

    Needs root (see :func:`fsd.testing.mount.devfuse_unavailable`); the mount is always
    detached on exit.
    """
    manager = _as_manager(plugins)
    fs = PassthroughFs(share, options or FsOptions())
    handler = HookedHandler(FuseServer(fs, transport="dev-fuse"), manager)
    try:
        with mounted(share, mountpoint, options=options, handler=handler.handle) as mount:
            yield mount
    finally:
        fs.close()


class Recorder:
    """A plugin recording every hook call as ``(hook name, arguments)``; it never denies.

    Set ``deny`` to a function returning an errno (or None) to make it a check plugin too.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.deny: Callable[[FuseRequestInfo], int | None] | None = None

    def of(self, hook: str) -> list[dict[str, Any]]:
        """The arguments of each call to ``hook``, in order."""
        return [args for name, args in self.calls if name == hook]

    @hookimpl
    def fsd_fuse_check(self, request: FuseRequestInfo) -> int | None:
        self.calls.append(("fsd_fuse_check", {"request": request}))
        return self.deny(request) if self.deny is not None else None

    @hookimpl
    def fsd_fuse_audit(self, request: FuseRequestInfo, error: int, bytes_moved: int) -> None:
        self.calls.append(
            ("fsd_fuse_audit", {"request": request, "error": error, "bytes_moved": bytes_moved})
        )

    @hookimpl
    def fsd_daemon_started(self, daemon: DaemonInfo) -> None:
        self.calls.append(("fsd_daemon_started", {"daemon": daemon}))

    @hookimpl
    def fsd_vmm_connected(self, vmm: VmmInfo) -> None:
        self.calls.append(("fsd_vmm_connected", {"vmm": vmm}))

    @hookimpl
    def fsd_vmm_disconnected(self, vmm: VmmInfo) -> None:
        self.calls.append(("fsd_vmm_disconnected", {"vmm": vmm}))

    @hookimpl
    def fsd_daemon_stopping(self, reason: str) -> None:
        self.calls.append(("fsd_daemon_stopping", {"reason": reason}))
