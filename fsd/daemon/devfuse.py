"""``fsd mount``: the same FUSE server, answering the host kernel through /dev/fuse.

A guest's virtiofs driver and the host kernel's FUSE client speak the same messages; only the
framing differs (descriptor chains there, one ``read``/``write`` per message here). Mounting on
the host lets the filesystem be exercised with plain system calls and compared with a plain
directory, without booting a VM. The ``fsd mount`` command is :mod:`fsd.cli.mount`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import select
import signal
import socket
import stat
import struct

import trio

from fsd.allowlist import Allowlist
from fsd.allowlist.handler import AfterHook, CheckHook, chain_afters, chain_checks
from fsd.allowlist.server import serve_allowlist
from fsd.daemon import fusermount, mount_syscalls
from fsd.daemon.pending import PendingReplies
from fsd.daemon.polling import SpinningWait, Waiter, make_waiter
from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer
from fsd.fuse.replies import DEFERRED
from fsd.hookinfo import DaemonInfo
from fsd.hooks_fuse import RequestHandler, make_request_handler
from fsd.plugins import Plugins
from fsd.sandbox import Sandbox, accept_signals
from fsd.status import DaemonStatus, RequestLatency, StatusConfig, timed_handler
from fsd.status.server import serve_status

__all__ = [
    "BUFFER_SIZE",
    "MountError",
    "check_mountpoint",
    "mount_until_signal",
    "serve_mount",
]

log = logging.getLogger(__name__)

DEV_FUSE = "/dev/fuse"
FSTYPE = "fuse.fsd"
MAX_WRITE = 1 << 20
# The kernel refuses a read buffer smaller than in_header + write_in + max_write (EINVAL);
# a page of slack covers the largest non-WRITE request (two names of PATH_MAX).
BUFFER_SIZE = 40 + 40 + MAX_WRITE + 4096
# Without a checkpoint now and then, a client that keeps the queue full would make the loop
# uncancellable (it only awaits when a read finds nothing).
_REQUESTS_PER_CHECKPOINT = 256

_OUT_HEADER = struct.Struct("<IiQ")
#: _IOR(229, 0, uint32_t): attach a new /dev/fuse fd to an existing session (linux/fuse.h).
FUSE_DEV_IOC_CLONE = 0x8004E500


class MountError(Exception):
    """The shared directory or mount point cannot be used, or mount(2) refused."""


def check_mountpoint(
    shared_dir: str | os.PathLike[str], mountpoint: str | os.PathLike[str]
) -> tuple[str, str]:
    """Resolve and validate both paths; return them absolute, or raise :class:`MountError`.

    The mount point must not lie inside the shared directory: the server would then look up
    its own mount and wait on itself forever.
    """
    shared = os.path.realpath(shared_dir)
    target = os.path.realpath(mountpoint)
    if not os.path.isdir(shared):
        raise MountError(f"shared directory {os.fspath(shared_dir)!r} is not a directory")
    # Ask the mount table before stat'ing: a stat on a dead FUSE mount fails or blocks.
    if mount_syscalls.is_mount_point(target):
        raise MountError(f"mount point {target!r} is already a mount point (unmount it first)")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise MountError(f"mount point {target!r} does not exist") from None
    except OSError as e:
        raise MountError(f"mount point {target!r} is unusable: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {target!r} is not a directory")
    if target == shared or target.startswith(shared.rstrip("/") + "/"):
        raise MountError(
            f"mount point {target!r} is inside the shared directory {shared!r} "
            "(the server would have to serve its own mount)"
        )
    return shared, target


def _default_handler(
    shared_dir: str,
    options: FsOptions | None,
    allowlist: Allowlist | None = None,
    plugins: Plugins | None = None,
) -> RequestHandler:
    """The passthrough filesystem behind the FUSE server, as ``fsd serve`` builds it, with the
    plugins' FUSE hooks around it only if some plugin implements one."""
    fs = PassthroughFs(shared_dir, options, allowlist=allowlist)
    return make_request_handler(FuseServer(fs, transport="dev-fuse"), plugins)


async def serve_mount(
    shared_dir: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    *,
    options: FsOptions | None = None,
    handler: RequestHandler | None = None,
    allowlist_socket_path: str | os.PathLike[str] | None = None,
    allowlist: Allowlist | None = None,
    allowlist_check: CheckHook | None = None,
    allowlist_after: AfterHook | None = None,
    plugins: Plugins | None = None,
    allow_other: bool | None = None,
    threads: int = 1,
    poll_max_ns: int = 0,
    mounted: fusermount.FuseMount | None = None,
    allowlist_listener: socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount ``shared_dir`` on ``mountpoint`` through /dev/fuse and serve it until cancelled.

    ``task_status.started(mountpoint)`` is called once the mount exists. Returns by itself when
    the mount is removed from outside (the kernel then answers ENODEV); on cancellation it
    detaches the mount. ``handler`` replaces the default passthrough server (tests, plugins).

    ``allowlist_socket_path`` starts the allowlist control server (as ``fsd serve`` does) for
    ``allowlist`` (a fresh, empty one by default) before mounting; a custom ``handler`` must
    then be built on that same allowlist. ``plugins`` adds their FUSE hooks to the default
    server and their allowlist hooks to the control server.

    Root mounts with mount(2), an ordinary user through fusermount3 (``fsd.daemon.fusermount``).
    ``allow_other`` lets users other than the mounting one use the mount; by default it is on
    for root (every local user sees the share with its host permissions) and off for a user,
    for whom it needs ``user_allow_other`` in /etc/fuse.conf.

    ``threads`` worker threads serve the requests (data operations on open files then run
    concurrently; the rest one at a time, see ``fsd.fuse.server.CONCURRENT``);
    ``poll_max_ns`` how long each may spin for the next request (:mod:`fsd.daemon.polling`).

    ``mounted``: a mount the caller made already (the command line, before its sandbox,
    where mounting and unmounting are no longer possible): it is served, not checked, made
    or detached here. ``allowlist_listener``: the control socket bound already.

    Process-wide set-up is the caller's: :func:`fsd.cli.process.prepare_process` (umask 0
    above all, or created files get the umask twice).
    """
    if threads < 1:
        raise ValueError(f"fsd mount needs at least one worker thread, not {threads}")
    if mounted is None:
        shared, target = check_mountpoint(shared_dir, mountpoint)
    else:
        shared, target = os.fspath(shared_dir), mounted.target
    if allow_other is None:
        allow_other = os.geteuid() == 0
    if allowlist_socket_path is not None and allowlist is None:
        allowlist = Allowlist()
    if handler is None:
        handler = _default_handler(shared, options, allowlist, plugins)
    if plugins is not None:
        plugin_check, plugin_after = plugins.allowlist_callbacks()
        allowlist_check = chain_checks(allowlist_check, plugin_check)
        allowlist_after = chain_afters(allowlist_after, plugin_after)
    if allowlist_socket_path is None:
        await _mount_and_serve(
            shared, target, handler, task_status, allow_other, threads, poll_max_ns, mounted
        )
        return
    assert allowlist is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                serve_allowlist,
                allowlist_socket_path,
                allowlist,
                check=allowlist_check,
                after=allowlist_after,
                listener=allowlist_listener,
            )
        )
        await _mount_and_serve(
            shared, target, handler, task_status, allow_other, threads, poll_max_ns, mounted
        )
        nursery.cancel_scope.cancel()


async def _mount_and_serve(
    shared: str,
    target: str,
    handler: RequestHandler,
    task_status: trio.TaskStatus[str],
    allow_other: bool,
    threads: int,
    poll_max_ns: int,
    premounted: fusermount.FuseMount | None,
) -> None:
    """Mount (unless the caller did), report the mount point, serve until unmounted or
    cancelled, then detach (unless the caller will)."""
    if premounted is not None:
        fd = premounted.fd
    else:
        try:
            # mount(2) as root; the setuid fusermount3 helper for an ordinary user.
            fd = fusermount.open_fuse_mount(shared, target, allow_other=allow_other)
        except fusermount.FuseMountError as e:
            raise MountError(str(e)) from None
    mounted = premounted is None  # ours to detach
    pending = PendingReplies()
    try:
        log.info("serving %s on %s", shared, target)
        task_status.started(target)
        await _serve_requests(fd, handler, pending, threads, poll_max_ns)
        mounted = False  # unmounted from outside: nothing left to detach
        log.info("%s was unmounted", target)
    finally:
        if mounted:
            try:
                fusermount.unmount_fuse(target)
            except OSError as e:
                log.warning("could not unmount %s: %s", target, e.strerror)
        pending.close()  # before the fd goes: a late lock grant must not write to a reused fd
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


async def _serve_requests(
    fd: int, handler: RequestHandler, pending: PendingReplies, threads: int, poll_max_ns: int
) -> None:
    """Serve the mount from ``threads`` worker threads until it is gone (ENODEV) or this task
    is cancelled; trio stays off the per-request path, as it does for virtqueues.

    Each worker reads its own clone of the session's fd (FUSE_DEV_IOC_CLONE; the first uses
    ``fd`` itself) and answers on it: the kernel queues a request's reply to the fd it was
    read from. Where a clone cannot be made (an ordinary user without access to /dev/fuse),
    the workers share ``fd``, which the kernel also allows.
    """
    stop = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    fds = [fd] + [_clone(fd) for _ in range(threads - 1)]
    # One worker spins, the others sleep: every worker's fd turns readable with each request,
    # so N spinning workers would burn N CPUs to catch one request (and starve the client).
    workers = [
        _Worker(i, fds[i], handler, pending, stop, poll_max_ns if i == 0 else 0)
        for i in range(threads)
    ]
    try:
        async with trio.open_nursery() as nursery:

            async def run(worker: _Worker) -> None:
                name = f"fsd-fuse-{worker.index}"
                await trio.to_thread.run_sync(worker.serve_blocking, thread_name=name)
                nursery.cancel_scope.cancel()  # the mount is gone (or we are stopping)

            for worker in workers:
                nursery.start_soon(run, worker)
            try:
                await trio.sleep_forever()
            finally:
                os.eventfd_write(stop, 1)
    finally:
        os.close(stop)
        for clone in fds[1:]:
            if clone != fd:
                os.close(clone)


def _clone(fd: int) -> int:
    """A new /dev/fuse fd attached to ``fd``'s session, or ``fd`` itself if none can be."""
    try:
        clone = os.open(DEV_FUSE, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        log.info("workers share one /dev/fuse fd: cannot open %s: %s", DEV_FUSE, e.strerror)
        return fd
    try:
        fcntl.ioctl(clone, FUSE_DEV_IOC_CLONE, struct.pack("I", fd))
    except OSError as e:
        os.close(clone)
        log.info("workers share one /dev/fuse fd: FUSE_DEV_IOC_CLONE: %s", e.strerror)
        return fd
    return clone


class _Worker:
    """One thread serving a /dev/fuse fd: read a request, answer it, write the reply."""

    def __init__(
        self,
        index: int,
        fd: int,
        handler: RequestHandler,
        pending: PendingReplies,
        stop: int,
        poll_max_ns: int = 0,
    ) -> None:
        self.index = index
        self.fd = fd
        self.handler = handler
        self.pending = pending
        self.stop = stop
        self.poll_max_ns = poll_max_ns

    def serve_blocking(self) -> None:
        """Serve until the mount is gone (then tell the other workers) or ``stop`` is set;
        between requests, spin a short adaptive window before sleeping (``poll_max_ns``).

        A deferred request (SETLKW) keeps its reply buffer until it is answered, from
        another thread (``os.write`` on the fuse fd is atomic per message); the loop takes a
        fresh one.
        """
        fd, handler, stop = self.fd, self.handler, self.stop
        request = memoryview(bytearray(BUFFER_SIZE))
        reply = memoryview(bytearray(BUFFER_SIZE))
        reply_segments = [reply]
        readv = os.readv
        buffers = [request]
        with select.epoll(2) as poller:
            poller.register(fd, select.EPOLLIN)
            poller.register(stop, select.EPOLLIN)
            wait = make_waiter(poller.poll, self.poll_max_ns)
            try:
                while True:
                    # Wait first, then read one request: a client that waits for each reply
                    # (most do) costs epoll, read and write per request, where reading until
                    # EAGAIN would add a failed read and an exception to each.
                    for ready, _ in wait():
                        if ready == stop:
                            return
                    try:
                        n = readv(fd, buffers)
                    except (BlockingIOError, InterruptedError):
                        continue  # another worker sharing this fd took it

                    except OSError as e:
                        if e.errno == errno.ENOENT:  # interrupted before we read it
                            continue
                        if e.errno != errno.ENODEV:
                            log.error("reading %s failed: %s", DEV_FUSE, e.strerror)
                        break  # ENODEV: the mount is gone
                    size = handler([request[:n]], reply_segments)
                    if size == DEFERRED:
                        self.pending.adopt(functools.partial(_send_deferred, fd, reply))
                        reply = memoryview(bytearray(BUFFER_SIZE))
                        reply_segments = [reply]
                    elif size > 0 and not _write_reply(fd, reply[:size]):
                        break
            finally:
                self._log_polling(wait)
        with contextlib.suppress(OSError):
            os.eventfd_write(stop, 1)  # the others stop too

    def _log_polling(self, wait: Waiter) -> None:
        if isinstance(wait, SpinningWait):
            log.info("fuse worker %d: %s", self.index, wait.summary())


def _send_deferred(fd: int, reply: memoryview, size: int) -> None:
    if size:
        _write_reply(fd, reply[:size])


def _write_reply(fd: int, reply: memoryview) -> bool:
    """Send one reply; return False once the mount is gone."""
    try:
        os.write(fd, reply)
    except OSError as e:
        if e.errno == errno.ENODEV:
            return False
        if e.errno == errno.ENOENT:  # the kernel gave up on an interrupted request
            return True
        unique = _OUT_HEADER.unpack_from(reply)[2] if len(reply) >= _OUT_HEADER.size else 0
        log.error("kernel rejected the reply to unique %d (%d bytes): %s", unique, len(reply), e)
    return True


async def mount_until_signal(
    shared: str,
    target: str,
    options: FsOptions | None,
    allowlist_socket_path: str | None,
    plugins: Plugins,
    status_config: StatusConfig | None = None,
    *,
    mounted: fusermount.FuseMount | None = None,
    allowlist_listener: socket.socket | None = None,
    status_listener: socket.socket | None = None,
    sandbox: Sandbox | None = None,
    threads: int = 1,
    poll_max_ns: int = 0,
) -> None:
    """Serve until SIGINT/SIGTERM (then detach) or until unmounted from outside; SIGHUP asks
    plugins to reload their configuration. ``status_config`` adds the status socket;
    ``threads``, ``poll_max_ns``: the worker threads (:func:`serve_mount`).

    ``mounted``, ``allowlist_listener``, ``status_listener``: made by the caller before its
    sandbox (:func:`serve_mount`); the mount is then the caller's to detach. ``sandbox``:
    where the shared directory is from inside, and what the status view says of it."""
    reason = "unmounted"
    status_config = status_config or StatusConfig()
    # Built here rather than by serve_mount, so that the status view can read them.
    allowlist = Allowlist() if allowlist_socket_path is not None else None
    root = sandbox.shared_dir if sandbox is not None else shared
    fs = PassthroughFs(root, options, allowlist=allowlist)
    server = FuseServer(fs, transport="dev-fuse")
    handler = make_request_handler(server, plugins)
    latency = RequestLatency() if status_config.latency_histogram else None
    if latency is not None:  # only then: the default request path stays as it is
        handler = timed_handler(handler, latency)
    status = DaemonStatus(
        transport="dev-fuse",
        shared_dir=shared,
        server=server,
        tables=fs,
        allowlist=allowlist,
        plugins=plugins,
        mountpoint=target,
        latency=latency,
        sandbox=sandbox,
    )
    signals_wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    try:
        with trio.open_signal_receiver(*signals_wanted) as signals:
            accept_signals()  # those that came during a sandboxed start-up arrive now
            async with trio.open_nursery() as nursery:

                async def cancel_on_signal() -> None:
                    nonlocal reason
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            plugins.reload()
                            continue
                        reason = f"signal {signal.Signals(signum).name}"
                        log.info("%s: unmounting %s", signal.Signals(signum).name, target)
                        nursery.cancel_scope.cancel()
                        return

                async def serve_then_stop(task_status: trio.TaskStatus[str]) -> None:
                    await serve_mount(
                        root,
                        target,
                        handler=handler,
                        allowlist_socket_path=allowlist_socket_path,
                        allowlist=allowlist,
                        plugins=plugins,
                        mounted=mounted,
                        allowlist_listener=allowlist_listener,
                        threads=threads,
                        poll_max_ns=poll_max_ns,
                        task_status=task_status,
                    )
                    nursery.cancel_scope.cancel()  # unmounted from outside

                nursery.start_soon(cancel_on_signal)
                if status_config.socket_path is not None:
                    await nursery.start(
                        functools.partial(
                            serve_status,
                            status_config.socket_path,
                            status,
                            listener=status_listener,
                        )
                    )
                await nursery.start(serve_then_stop)
                await plugins.daemon_started(DaemonInfo(shared, "dev-fuse", target))
    finally:
        await plugins.daemon_stopping(reason)
