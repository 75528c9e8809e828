"""``fsd serve``: the root nursery of the vhost-user daemon."""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import struct

import attrs
import trio

from fsd.allowlist import Allowlist
from fsd.allowlist.server import bind_allowlist_socket, serve_allowlist
from fsd.daemon import systemd
from fsd.daemon.queues import ChainHandler, FourHandler
from fsd.daemon.vhost_conn import serve_vhost_user_connection
from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer
from fsd.hookinfo import DaemonInfo, VmmInfo
from fsd.hooks_fuse import make_request_handler
from fsd.plugins import Plugins
from fsd.sandbox import Sandbox, accept_signals
from fsd.status import DaemonStatus, RequestLatency, StatusConfig, timed_handler
from fsd.status.server import bind_status_socket, serve_status
from fsd.unix_sockets import Listener, listen_unix
from fsd.vhost_user.backend import DeviceSpec
from fsd.virtio_fs import NUM_QUEUES, virtio_fs_device

__all__ = ["Listeners", "ServeConfig", "bind_listeners", "open_vhost_user_listener", "serve"]

log = logging.getLogger("fsd")


@attrs.frozen
class ServeConfig:
    """What ``fsd serve`` was asked to do (validated by the CLI)."""

    shared_dir: str
    socket_path: str | None = None
    #: ``--fd``: an inherited socket, either listening (virtiofsd's convention) or already
    #: connected to the front-end (crosvm's).
    listen_fd: int | None = None
    #: ``--socket-group``: a group (e.g. the VMM's) allowed to connect too (socket 0660).
    socket_group: str | None = None
    tag: str | None = None
    allowlist_socket_path: str | None = None
    fs_options: FsOptions = attrs.field(factory=FsOptions)
    #: ``--thread-pool-size``: threads serving the requests (0: each queue's own thread).
    thread_pool_size: int = 0
    #: ``--poll-max-ns``: how long a queue worker may spin for the next kick (0: never).
    poll_max_ns: int = 0
    #: ``--status-socket``, ``--latency-histogram``: the read-only status view.
    status: StatusConfig = attrs.field(factory=StatusConfig)
    #: ``--reconnect``: after the front-end disconnects, wait for the next one (a restarted
    #: VMM) instead of exiting. Each front-end starts from an empty inode and handle table.
    reconnect: bool = False


def open_vhost_user_listener(config: ServeConfig) -> Listener:
    """Bind the vhost-user socket or adopt ``--fd`` (listening or already connected:
    :func:`serve` tells them apart). A socket file is created 0600 (0660 with
    ``socket_group``) and replaces only a stale one; only a file bound here is removed at
    exit (:meth:`Listener.remove`)."""
    if config.listen_fd is not None:
        return Listener(socket.socket(fileno=config.listen_fd))
    assert config.socket_path is not None
    # Socket activation: the .socket unit's listener at this path is used, not replaced.
    activated = systemd.adopt_unix_listener(config.socket_path, systemd.listen_fds())
    if activated is not None:
        return Listener(activated)
    return listen_unix(config.socket_path, socket.SOCK_STREAM, 1, group=config.socket_group)


@attrs.define
class Listeners:
    """Every socket ``fsd serve`` serves on, bound before it serves: the command line binds
    them before it enters the sandbox, where their directories do not exist."""

    vhost_user: Listener
    allowlist: Listener | None = None
    status: Listener | None = None

    def all(self) -> list[Listener]:
        return [x for x in (self.vhost_user, self.allowlist, self.status) if x is not None]

    def remove(self) -> None:
        """Remove the socket files bound here (at exit, from outside the sandbox)."""
        for listener in self.all():
            listener.remove()

    def close(self) -> None:
        for listener in self.all():
            listener.sock.close()


def bind_listeners(config: ServeConfig) -> Listeners:
    """Bind (or adopt) the vhost-user socket, then the allowlist and status sockets if asked
    for. An OSError names the path; nothing is left bound then."""
    listeners = Listeners(open_vhost_user_listener(config))
    try:
        if config.allowlist_socket_path is not None:
            listeners.allowlist = bind_allowlist_socket(config.allowlist_socket_path)
        if config.status.socket_path is not None:
            listeners.status = bind_status_socket(config.status.socket_path)
    except BaseException:
        listeners.remove()
        listeners.close()
        raise
    return listeners


def _socket_name(config: ServeConfig) -> str:
    """The vhost-user socket as the status view names it: its absolute path, or ``fd N``."""
    if config.socket_path is None:
        return f"fd {config.listen_fd}"
    return os.path.abspath(config.socket_path)


class _Shutdown:
    """Why the daemon stops, for the ``fsd_daemon_stopping`` hook."""

    reason = "vmm disconnected"


async def _handle_signals(
    scope: trio.CancelScope,
    plugins: Plugins,
    shutdown: _Shutdown,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGINT/SIGTERM stop the daemon; SIGHUP asks plugins to reload their configuration."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading plugin configuration")
                plugins.reload()
                continue
            log.info("%s: shutting down", name)
            shutdown.reason = f"signal {name}"
            scope.cancel()
            return


def _peer(sock: trio.socket.SocketType, sandbox: Sandbox | None) -> VmmInfo:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return VmmInfo()
    pid, uid, gid = struct.unpack("3i", creds)
    if pid == 0 and sandbox is not None and sandbox.supervisor is not None:
        # A process outside our pid namespace (the namespace sandbox's): the supervisor,
        # in the host's, can tell.
        try:
            pid = sandbox.supervisor.peer_pid(sock.fileno())
        except OSError as exc:
            log.debug("cannot learn the front-end's pid from the supervisor: %s", exc)
    return VmmInfo(pid or -1, uid, gid)


async def _serve_frontend(
    sock: trio.socket.SocketType,
    device: DeviceSpec,
    handler: ChainHandler,
    four_handler: FourHandler | None,
    config: ServeConfig,
    plugins: Plugins,
    status: DaemonStatus,
    sandbox: Sandbox | None,
) -> None:
    """One front-end's connection, from accept to disconnect."""
    vmm = _peer(sock, sandbox)
    log.info(
        "vhost-user: front-end connected (pid %d, uid %d, gid %d)",
        vmm.pid,
        vmm.uid,
        vmm.gid,
        extra={"vmm_pid": vmm.pid, "vmm_uid": vmm.uid, "vmm_gid": vmm.gid},
    )
    systemd.notify_status(f"serving the front-end (pid {vmm.pid})")
    status.frontend_connected(vmm)
    await plugins.vmm_connected(vmm)
    try:
        await serve_vhost_user_connection(
            sock,
            device,
            [handler] * NUM_QUEUES,
            four_handler=four_handler,
            thread_pool_size=config.thread_pool_size,
            poll_max_ns=config.poll_max_ns,
            on_connection=status.connection_opened,
        )
    finally:
        status.frontend_disconnected()
        await plugins.vmm_disconnected(vmm)


async def serve(
    config: ServeConfig,
    *,
    plugins: Plugins | None = None,
    handle_signals: bool = True,
    listeners: Listeners | None = None,
    sandbox: Sandbox | None = None,
    task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one VMM over vhost-user until it disconnects (or, with ``reconnect``, each VMM
    that connects in turn) or a signal arrives.

    Process-wide set-up is the caller's: :func:`fsd.cli.process.prepare_process` (umask 0
    above all: the guest kernel has already applied the caller's umask to every mode it
    sends, and the host must not apply another one). ``listeners``: the sockets the caller
    bound (:func:`bind_listeners`), whose files it then removes; without, they are bound
    and removed here. ``sandbox``: what the status view says about the sandbox.
    """
    plugins = plugins if plugins is not None else Plugins()
    shutdown = _Shutdown()
    # With a control socket the guest starts seeing nothing (crosvm); without, everything.
    allowlist = Allowlist() if config.allowlist_socket_path is not None else None
    # Inside the sandbox the shared directory is where it says (chroot: /).
    root = sandbox.shared_dir if sandbox is not None else config.shared_dir
    fs = PassthroughFs(root, config.fs_options, allowlist=allowlist)
    server = FuseServer(fs, transport="vhost-user")
    # server.handle itself unless a plugin implements a FUSE hook: no cost without plugins.
    handler = make_request_handler(server, plugins)
    latency = RequestLatency() if config.status.latency_histogram else None
    if latency is not None:  # only then: the default request path stays as it is
        handler = timed_handler(handler, latency)
    # Linux's most common chains served from where they lie, when nothing wraps the server.
    four = server.handle_four if handler == server.handle else None
    status = DaemonStatus(
        transport="vhost-user",
        shared_dir=config.shared_dir,
        server=server,
        tables=fs,
        allowlist=allowlist,
        plugins=plugins,
        socket=_socket_name(config),
        thread_pool_size=config.thread_pool_size,
        latency=latency,
        sandbox=sandbox,
    )
    plugin_check, plugin_after = plugins.allowlist_callbacks()
    device = virtio_fs_device(config.tag)
    owned = listeners is None
    if listeners is None:
        listeners = bind_listeners(config)
    listener = trio.socket.from_stdlib_socket(listeners.vhost_user.sock)
    try:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                await nursery.start(_handle_signals, nursery.cancel_scope, plugins, shutdown)
            if allowlist is not None:
                assert config.allowlist_socket_path is not None
                await nursery.start(
                    functools.partial(
                        serve_allowlist,
                        config.allowlist_socket_path,
                        allowlist,
                        check=plugin_check,
                        after=plugin_after,
                        listener=listeners.allowlist.sock if listeners.allowlist else None,
                    )
                )
            if config.status.socket_path is not None:
                await nursery.start(
                    functools.partial(
                        serve_status,
                        config.status.socket_path,
                        status,
                        listener=listeners.status.sock if listeners.status else None,
                    )
                )
            where = config.socket_path or f"fd {config.listen_fd}"
            log.info("vhost-user: listening on %s", where, extra={"socket": where})
            systemd.notify_ready(f"listening on {where}")
            # Signals a sandboxed start-up held back arrive now, to the handlers above.
            accept_signals()
            task_status.started(config.socket_path)
            await plugins.daemon_started(
                DaemonInfo(config.shared_dir, "vhost-user", config.socket_path)
            )
            with listener:
                # An inherited socket may be the front-end's connection already (crosvm).
                listening = listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                while True:
                    if listening:
                        sock, _ = await listener.accept()
                    else:
                        sock = trio.socket.from_stdlib_socket(
                            socket.socket(fileno=os.dup(listener.fileno()))
                        )
                    with sock:
                        await _serve_frontend(
                            sock, device, handler, four, config, plugins, status, sandbox
                        )
                    # Whatever the guest held goes: its files (and with them its locks),
                    # its inodes. A reconnecting front-end is a new guest that sends INIT.
                    server.reset()
                    if not (config.reconnect and listening):
                        break
                    log.info("vhost-user: waiting for the front-end to reconnect")
                    systemd.notify_status(f"waiting for a front-end on {where}")
            nursery.cancel_scope.cancel()
    finally:
        systemd.notify_stopping(shutdown.reason)
        await plugins.daemon_stopping(shutdown.reason)
        listener.close()
        if owned:
            listeners.remove()
