"""Mount a directory through fsd on the host kernel's FUSE, for tests and plugin authors.

The server runs in a background thread with its own ``trio.run``, so a test calls plain blocking
``os.*`` functions on the mount point and the kernel forwards them to fsd. In-process rather
than a subprocess: mounting costs well under a millisecond, the test can hand in its own server
(with plugins), and a failure shows up as a Python traceback in the same log.

Teardown always detaches the mount, even when the server is wedged (fusectl abort first).
While mounted, the process is set up as ``fsd mount``'s (:func:`fsd.cli.process.prepare_process`:
umask 0, no supplementary groups as root) and put back afterwards; compare against reference
directories created in the same process and the umask is the same for both.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import trio

from fsd.cli.process import prepare_process
from fsd.daemon import mount_syscalls
from fsd.daemon.devfuse import serve_mount
from fsd.fs import FsOptions
from fsd.hooks_fuse import RequestHandler

__all__ = ["Mount", "devfuse_unavailable", "force_unmount", "mounted"]


def devfuse_unavailable() -> str | None:
    """Why a /dev/fuse mount cannot work here (a pytest skip reason), or None if it can."""
    if os.geteuid() != 0:
        return "mounting through /dev/fuse needs root (CAP_SYS_ADMIN)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    return None


@attrs.frozen
class Mount:
    """A live fsd mount: the host directory it serves and where it is mounted."""

    shared_dir: Path
    mountpoint: Path
    st_dev: int


def force_unmount(mountpoint: str | os.PathLike[str], st_dev: int | None = None) -> None:
    """Detach ``mountpoint`` if it is still mounted; abort its connection first if wedged."""
    target = os.path.realpath(mountpoint)
    if st_dev is not None and mount_syscalls.is_mount_point(target):
        mount_syscalls.abort_connection(st_dev)
    while mount_syscalls.is_mount_point(target):
        try:
            mount_syscalls.umount(target)
        except OSError:
            return


class _ServerThread(threading.Thread):
    """Runs serve_mount under its own trio.run and lets another thread stop it."""

    def __init__(
        self,
        shared_dir: Path,
        mountpoint: Path,
        options: FsOptions | None,
        handler: RequestHandler | None,
        threads: int = 1,
    ) -> None:
        super().__init__(name=f"fsd mount {mountpoint}", daemon=True)
        self._args = (shared_dir, mountpoint, options, handler, threads)
        self.started_event = threading.Event()
        self.error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

    def run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as e:  # handed to the thread that waits for startup
            while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
                e = e.exceptions[0]
            self.error = e
        finally:
            self.started_event.set()

    async def _serve(self) -> None:
        shared_dir, mountpoint, options, handler, threads = self._args
        with trio.CancelScope() as scope:
            self._scope = scope
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: serve_mount(
                        shared_dir,
                        mountpoint,
                        options=options,
                        handler=handler,
                        threads=threads,
                        task_status=task_status,
                    )
                )
                self.started_event.set()

    def stop(self) -> None:
        """Cancel the server (it then detaches its mount); safe to call from any thread."""
        token, scope = self._token, self._scope
        if token is None or scope is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(scope.cancel)


@contextlib.contextmanager
def mounted(
    shared_dir: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str] | None = None,
    *,
    options: FsOptions | None = None,
    handler: RequestHandler | None = None,
    threads: int = 1,
    timeout: float = 10.0,
) -> Iterator[Mount]:
    """Serve ``shared_dir`` through fsd on ``mountpoint`` (a fresh temporary one by default).

    Yields a :class:`Mount`; on exit the server is stopped, the mount detached and the
    process set-up undone, whatever happened. ``handler`` replaces the default passthrough
    FUSE server's ``handle``; ``threads`` worker threads serve it.
    """
    made_mountpoint = mountpoint is None
    target = Path(tempfile.mkdtemp(prefix="fsd-mnt-") if mountpoint is None else mountpoint)
    thread = _ServerThread(Path(shared_dir), target, options, handler, threads)
    st_dev: int | None = None
    process = prepare_process()
    try:
        thread.start()
        if not thread.started_event.wait(timeout):
            raise TimeoutError(f"fsd did not mount {target} within {timeout} s")
        if thread.error is not None:
            raise thread.error
        st_dev = os.stat(target).st_dev
        yield Mount(Path(shared_dir), target, st_dev)
    finally:
        thread.stop()
        thread.join(timeout)
        if thread.is_alive():
            force_unmount(target, st_dev)
            thread.join(timeout)
        else:
            force_unmount(target)
        process.restore()
        if made_mountpoint:
            # rmdir, never rmtree: if the mount somehow survived, rmtree would empty the share.
            with contextlib.suppress(OSError):
                target.rmdir()
