"""Hook specifications: what an fsd plugin may implement.

Plugins implement any subset of these functions, marked with :data:`hookimpl`, in a module or
object registered under the ``fsd`` entry-point group (see docs/plugins.md). Only plugins named
with ``--plugin`` are loaded. Every hook is called synchronously; docs/hooks.md is the
reference and a test keeps it in step with this file.

Failure semantics (enforced by :mod:`fsd.plugins`, not by pluggy): an exception or a wrong
return value in a *check* hook denies the operation and is logged with the plugin's name; an
exception in any other hook is logged and changes nothing. For the check hooks the first
denial wins: no plugin can allow what another denied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from fsd.allowlist.handler import AllowlistChange
    from fsd.allowlist.protocol import Response
    from fsd.hookinfo import DaemonInfo, FuseRequestInfo, VmmInfo
    from fsd.plugins import OptionRegistry, PluginConfig

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "fsd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -------------------------------------------------------------------------------------------
# Configuration hooks: called once at startup, before anything is served
# -------------------------------------------------------------------------------------------


@hookspec(historic=True)
def fsd_addoption(options: OptionRegistry) -> None:
    """Declare this plugin's ``--plugin-cfg NAMESPACE:key=value`` options.

    :param options: call ``options.add(namespace, key, help, default=None)`` once per key.
        Use your entry-point name as the namespace.

    Synchronous. A ``--plugin-cfg`` naming an undeclared namespace or key stops startup.

    .. note:: This hook is historic: a plugin registered late still gets the call.
    """


@hookspec(historic=True)
def fsd_configure(config: PluginConfig) -> None:
    """Read your option values and get ready to serve.

    :param config: ``config.options(namespace)`` returns the given values and defaults.

    Synchronous. Raise ``ValueError`` with a clear message to refuse a bad configuration: the
    daemon then exits before serving anything.

    .. note:: This hook is historic: a plugin registered late still gets the call.
    """


# -------------------------------------------------------------------------------------------
# FUSE hooks: called for every request, inline on the thread serving it (the hot path): one
# worker thread per virtqueue under ``fsd serve`` (so concurrently), the trio thread under
# ``fsd mount``
# -------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def fsd_fuse_check(request: FuseRequestInfo) -> int | None:
    """Decide whether a FUSE request may run; return a positive errno to deny it.

    :param request: the decoded request: opcode, paths, names, caller ids, transport.

    Return ``None`` to abstain. Stops at first non-None result: the first denial wins, and no
    plugin can allow what another denied (there is no "allow" value). The guest gets
    ``-errno``. Not called for requests that get no reply (FORGET, BATCH_FORGET, INTERRUPT),
    nor for INIT and DESTROY: a denied INIT would leave the guest without a filesystem while
    the daemon stays up. The audit hook still sees all of them.

    Synchronous and on the hot path: a slow implementation delays every request on that
    queue (under ``fsd mount``, also the allowlist socket and signals). Hooks may run on
    several threads at once: guard shared state. Hand slow work (network, disk) to your own
    thread. An exception, a non-int result,
    an errno outside 1..4095 or an ``async def`` implementation denies with EACCES and is
    logged with the plugin's name.
    """


@hookspec
def fsd_fuse_audit(request: FuseRequestInfo, error: int, bytes_moved: int) -> None:
    """See the outcome of a FUSE request after the filesystem ran it (or a check denied it).

    :param request: the same value the check hook saw.
    :param error: the positive errno answered, 0 on success (also 0 for requests that get no
        reply).
    :param bytes_moved: file data bytes read (READ) or written (WRITE, COPY_FILE_RANGE);
        0 otherwise.

    Synchronous and on the hot path, like :func:`fsd_fuse_check`. Exceptions are logged and
    change nothing; every other plugin's audit hook still runs.
    """


# -------------------------------------------------------------------------------------------
# Allowlist hooks: called for each AddPaths/RemovePaths on the control socket
# -------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def fsd_allowlist_check(change: AllowlistChange) -> str | None:
    """Decide whether an allowlist change may be applied; return a reason string to refuse.

    :param change: ``change.op`` is ``"add"`` or ``"remove"``, ``change.path_strings()`` the
        normalized paths.

    Return ``None`` to abstain. Stops at first non-None result: the first refusal wins. The
    client gets ``{"Err": reason}``. Synchronous. An exception or a non-str result refuses the
    change (``{"Err": "...: the policy check failed"}``) and is logged.
    """


@hookspec
def fsd_allowlist_audit(change: AllowlistChange, response: Response) -> None:
    """See every decoded allowlist change and the answer the client got.

    :param change: the change, as the check hook saw it.
    :param response: ``Ok()`` when applied, ``Err(message)`` when refused or invalid.

    Synchronous. Exceptions are logged and change nothing.
    """


# -------------------------------------------------------------------------------------------
# Lifecycle hooks: called on the daemon's trio thread. An awaitable an implementation returns
# is awaited to completion, at most 5 s (then cancelled and logged), and the daemon waits for
# it: under ``fsd serve`` the VMM is accepted only after fsd_daemon_started returns and its
# queues are served only after fsd_vmm_connected returns. Do not start long-running work in
# an awaitable; start your own (daemon) thread and stop it in fsd_daemon_stopping.
# -------------------------------------------------------------------------------------------


@hookspec
def fsd_daemon_started(daemon: DaemonInfo) -> None:
    """The daemon is listening (vhost-user) or mounted (``fsd mount``).

    :param daemon: the shared directory, the transport and the socket path or mount point.

    Synchronous; may return an awaitable, which the daemon awaits to completion (at most
    5 s, then cancelled) before it accepts the VMM: keep it short. Long-running work belongs
    on your own thread, not in the awaitable. Exceptions are logged.
    """


@hookspec
def fsd_vmm_connected(vmm: VmmInfo) -> None:
    """A VMM connected to the vhost-user socket.

    :param vmm: the front-end's pid/uid/gid from ``SO_PEERCRED``.

    Synchronous; may return an awaitable, awaited to completion (at most 5 s) before the
    daemon serves the VMM's queues. Exceptions are logged.
    """


@hookspec
def fsd_vmm_disconnected(vmm: VmmInfo) -> None:
    """The VMM connection closed (the guest shut down or the VMM died).

    :param vmm: the same value :func:`fsd_vmm_connected` got.

    Synchronous; may return an awaitable, awaited to completion (at most 5 s). Exceptions
    are logged.
    """


@hookspec
def fsd_reload() -> None:
    """Reread configuration (the daemon got SIGHUP).

    Synchronous, on the daemon's trio thread while FUSE hooks may be running on queue
    threads: replace your configuration as one value (one attribute store), never piece by
    piece. The daemon owns signal handling: plugins must not install signal handlers
    themselves. Keep the old configuration if the new one is bad, and log why.
    """


@hookspec
def fsd_daemon_stopping(reason: str) -> None:
    """The daemon is shutting down: flush and close what you hold.

    :param reason: ``"signal SIGTERM"``, ``"vmm disconnected"``, ``"unmounted"``...

    Synchronous; may return an awaitable, awaited to completion (at most 5 s) even though
    the daemon is being cancelled. A queue thread may still be in an audit hook meanwhile:
    make closing safe against that. Exceptions are logged.
    """
