"""The same system calls on an fsd mount and on a plain directory give the same results.

A hypothesis state machine replays one random sequence of calls on both trees (fsx-style) and
compares every result and errno, plus the whole tree after each step. Both trees live on the
same host file system, so sizes, modes and link counts must match exactly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections import Counter
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer, abi
from fsd.fuse.abi import Opcode
from fsd.sgbuf import Segments
from fsd.testing.mount import Mount, devfuse_unavailable, mounted

pytestmark = [pytest.mark.devfuse, pytest.mark.timeout(120, method="thread")]

# A small namespace so that calls collide: EEXIST, ENOENT, ENOTDIR, ENOTEMPTY, EISDIR...
PATHS = st.sampled_from(["a", "b", "c", "d", "d/a", "d/b", "e", "e/d", "e/d/a", "a/x"])
MODES = st.sampled_from([0o600, 0o644, 0o755, 0o700, 0o444, 0o1777])
DATA = st.binary(max_size=96)
OFFSETS = st.integers(min_value=0, max_value=200)
OPEN_FLAGS = st.sampled_from(
    [
        os.O_RDONLY,
        os.O_WRONLY,
        os.O_RDWR,
        os.O_RDWR | os.O_APPEND,
        os.O_WRONLY | os.O_TRUNC,
        os.O_RDWR | os.O_CREAT,
        os.O_RDWR | os.O_CREAT | os.O_EXCL,
        os.O_RDONLY | os.O_DIRECTORY,
    ]
)
# Relative targets that stay inside the case directory wherever the link is made. An absolute or
# "../" target would make both trees write through it to the same host path outside the test.
SYMLINK_TARGETS = st.sampled_from(["a", "d", "e/d", "missing"])
XATTR_NAMES = st.sampled_from(["user.a", "user.b", "user.long." + "n" * 200, "trusted.t", "bad"])
XATTR_VALUES = st.binary(max_size=64)
XATTR_FLAGS = st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE])

Outcome = tuple[str, Any]


def _attempt(call: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", call())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno or 0, e.errno))


def _summary(st_: os.stat_result) -> tuple[int, int, int | None, int]:
    """The stat fields a passthrough must reproduce exactly (times and ino are its own)."""
    kind = stat.S_IFMT(st_.st_mode)
    size = st_.st_size if kind == stat.S_IFREG or kind == stat.S_IFLNK else None
    return (kind, stat.S_IMODE(st_.st_mode), size, st_.st_nlink)


def _tree(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: type, mode, size, links, (files) content, and xattrs."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            lst = os.lstat(path)
            entry: tuple[Any, ...] = _summary(lst)
            if stat.S_ISLNK(lst.st_mode):
                entry += (os.readlink(path),)
            elif stat.S_ISREG(lst.st_mode) and lst.st_mode & 0o400:
                entry += (path.read_bytes(),)
            if not stat.S_ISLNK(lst.st_mode):  # (fsd: EOPNOTSUPP on a symlink itself)
                names = sorted(os.listxattr(path, follow_symlinks=False))
                entry += tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
            out[rel] = entry
    return out


class SameAsPlainDirectory(RuleBasedStateMachine):
    """Applies each call to ``mounted/case-N`` and ``reference/case-N`` and compares."""

    handles = Bundle("handles")

    def __init__(self, mounted_root: Path, reference_root: Path, case: int) -> None:
        super().__init__()
        self.mounted = mounted_root / f"case-{case}"
        self.reference = reference_root / f"case-{case}"
        self.mounted.mkdir()
        self.reference.mkdir()
        self.open_fds: list[int] = []

    def both(self, call: Callable[[Path], Any]) -> Any:
        got = _attempt(lambda: call(self.mounted))
        want = _attempt(lambda: call(self.reference))
        assert got == want, f"fsd mount: {got!r}, plain directory: {want!r}"
        return got

    @rule(path=PATHS, mode=MODES, exclusive=st.booleans())
    def create(self, path: str, mode: int, exclusive: bool) -> None:
        flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else 0)
        self.both(lambda root: os.close(os.open(root / path, flags, mode)))

    @rule(path=PATHS, offset=OFFSETS, data=DATA)
    def write_at(self, path: str, offset: int, data: bytes) -> None:
        def call(root: Path) -> int:
            fd = os.open(root / path, os.O_WRONLY)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        self.both(call)

    @rule(path=PATHS, offset=OFFSETS, size=st.integers(0, 300))
    def read_at(self, path: str, offset: int, size: int) -> None:
        def call(root: Path) -> bytes:
            fd = os.open(root / path, os.O_RDONLY)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)

        self.both(call)

    @rule(path=PATHS, size=OFFSETS)
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda root: os.truncate(root / path, size))

    @rule(src=PATHS, dst=PATHS)
    def rename(self, src: str, dst: str) -> None:
        self.both(lambda root: os.rename(root / src, root / dst))

    @rule(src=PATHS, dst=PATHS)
    def link(self, src: str, dst: str) -> None:
        self.both(lambda root: os.link(root / src, root / dst))

    @rule(link_target=SYMLINK_TARGETS, path=PATHS)
    def symlink(self, link_target: str, path: str) -> None:
        self.both(lambda root: os.symlink(link_target, root / path))

    @rule(path=PATHS)
    def readlink(self, path: str) -> None:
        self.both(lambda root: os.readlink(root / path))

    @rule(path=PATHS)
    def unlink(self, path: str) -> None:
        self.both(lambda root: os.unlink(root / path))

    @rule(path=PATHS, mode=MODES)
    def mkdir(self, path: str, mode: int) -> None:
        self.both(lambda root: os.mkdir(root / path, mode))

    @rule(path=PATHS)
    def rmdir(self, path: str) -> None:
        self.both(lambda root: os.rmdir(root / path))

    @rule(path=PATHS, mode=MODES)
    def chmod(self, path: str, mode: int) -> None:
        self.both(lambda root: os.chmod(root / path, mode))

    @rule(path=PATHS)
    def listdir(self, path: str) -> None:
        self.both(lambda root: sorted(os.listdir(root / path)))

    @rule(path=PATHS, follow=st.booleans())
    def stat_path(self, path: str, follow: bool) -> None:
        self.both(lambda root: _summary(os.stat(root / path, follow_symlinks=follow)))

    @rule(target=handles, path=PATHS, flags=OPEN_FLAGS, mode=MODES)
    def open_file(self, path: str, flags: int, mode: int) -> Any:
        fds: list[int] = []

        def call(root: Path) -> None:
            fds.append(os.open(root / path, flags, mode))

        outcome = self.both(call)
        self.open_fds.extend(fds)
        if outcome[0] != "ok":
            return multiple()
        return (fds[0], fds[1])

    def both_fds(self, pair: tuple[int, int], call: Callable[[int], Any]) -> None:
        got = _attempt(lambda: call(pair[0]))
        want = _attempt(lambda: call(pair[1]))
        assert got == want, f"fsd mount: {got!r}, plain directory: {want!r}"

    @rule(pair=handles, data=DATA)
    def fd_write(self, pair: tuple[int, int], data: bytes) -> None:
        self.both_fds(pair, lambda fd: (os.write(fd, data), os.lseek(fd, 0, os.SEEK_CUR)))

    @rule(pair=handles, size=st.integers(0, 300), offset=OFFSETS)
    def fd_pread(self, pair: tuple[int, int], size: int, offset: int) -> None:
        self.both_fds(pair, lambda fd: os.pread(fd, size, offset))

    @rule(pair=handles, size=OFFSETS)
    def fd_truncate(self, pair: tuple[int, int], size: int) -> None:
        self.both_fds(pair, lambda fd: os.ftruncate(fd, size))

    @rule(pair=handles)
    def fd_fstat(self, pair: tuple[int, int]) -> None:
        self.both_fds(pair, lambda fd: _summary(os.fstat(fd)))

    @rule(pair=handles)
    def fd_fsync(self, pair: tuple[int, int]) -> None:
        self.both_fds(pair, os.fsync)

    def both_xattr(self, path: str, follow: bool, call: Callable[[Path], Any]) -> None:
        """An xattr call: the same as on the plain directory, except on a symlink itself,
        whose xattrs fsd does not serve: EOPNOTSUPP where the call reaches fsd (it never opens
        a symlink, fsd.fs.procfd); the host kernel still answers ``user.*`` itself."""
        if not follow and os.path.islink(self.reference / path):
            got = _attempt(lambda: call(self.mounted))
            want = _attempt(lambda: call(self.reference))
            assert got in (want, ("err", errno.errorcode[errno.EOPNOTSUPP])), (got, want)
        else:
            self.both(call)

    @rule(path=PATHS, name=XATTR_NAMES, value=XATTR_VALUES, flags=XATTR_FLAGS, follow=st.booleans())
    def setxattr(self, path: str, name: str, value: bytes, flags: int, follow: bool) -> None:
        self.both_xattr(
            path,
            follow,
            lambda root: os.setxattr(root / path, name, value, flags, follow_symlinks=follow),
        )

    @rule(path=PATHS, name=XATTR_NAMES, follow=st.booleans())
    def getxattr(self, path: str, name: str, follow: bool) -> None:
        self.both_xattr(
            path, follow, lambda root: os.getxattr(root / path, name, follow_symlinks=follow)
        )

    @rule(path=PATHS, follow=st.booleans())
    def listxattr(self, path: str, follow: bool) -> None:
        self.both_xattr(
            path, follow, lambda root: sorted(os.listxattr(root / path, follow_symlinks=follow))
        )

    @rule(path=PATHS, name=XATTR_NAMES, follow=st.booleans())
    def removexattr(self, path: str, name: str, follow: bool) -> None:
        self.both_xattr(
            path, follow, lambda root: os.removexattr(root / path, name, follow_symlinks=follow)
        )

    @invariant()
    def trees_match(self) -> None:
        assert _tree(self.mounted) == _tree(self.reference)

    def teardown(self) -> None:
        for fd in self.open_fds:
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def reference_root(tmp_path: Path) -> Path:
    path = tmp_path / "reference"
    path.mkdir()
    return path


def test_same_results_as_a_plain_directory(fsd_mount: Mount, reference_root: Path) -> None:
    cases = count()

    class OnThisMount(SameAsPlainDirectory):
        def __init__(self) -> None:
            super().__init__(fsd_mount.mountpoint, reference_root, next(cases))

    run_state_machine_as_test(
        OnThisMount,
        settings=settings(
            max_examples=150,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_xattrs_match_a_plain_directory(fsd_mount: Mount, reference_root: Path) -> None:
    results = []
    for root in (fsd_mount.mountpoint, reference_root):
        path = root / "xattr-file"
        path.write_text("x")
        os.setxattr(path, "user.fsd", b"value")
        results.append((os.getxattr(path, "user.fsd"), sorted(os.listxattr(path))))
    assert results[0] == results[1]


def test_posix_locks_match_a_plain_directory(fsd_mount: Mount, reference_root: Path) -> None:
    """A process's own locks never conflict (fsd holds them as host locks): same as ext4.

    Conflicts between processes and with host processes: tests/devfuse/test_devfuse_locks.py.
    """
    for root in (fsd_mount.mountpoint, reference_root):
        with open(root / "lock-file", "w") as f:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.lockf(f, fcntl.LOCK_UN)


class _CountingServer:
    """Counts requests by opcode on their way to a real FuseServer."""

    def __init__(self, inner: FuseServer) -> None:
        self.inner = inner
        self.counts: Counter[int] = Counter()

    def handle(self, request: Segments, reply: Segments) -> int:
        self.counts[abi.IN_HEADER.unpack_from(request[0])[1]] += 1
        return self.inner.handle(request, reply)


@pytest.mark.parametrize("rewrite", [False, True], ids=["killpriv_v2", "rewrite_security"])
def test_getxattr_per_write(share: Path, tmp_path: Path, rewrite: bool) -> None:
    """With xattrs served, the client must not ask for security.capability before every WRITE.

    With HANDLE_KILLPRIV_V2 (the default) the kernel marks the inode S_NOSEC after one check;
    with rewrite_security_xattrs it must keep asking (and does, once per WRITE).
    """
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    options = FsOptions(rewrite_security_xattrs=rewrite)
    server = _CountingServer(FuseServer(PassthroughFs(share, options), transport="dev-fuse"))
    writes = 200
    with mounted(share, handler=server.handle, options=options) as mount:
        fd = os.open(mount.mountpoint / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(writes):
                os.pwrite(fd, b"x" * 512, i * 512)
        finally:
            os.close(fd)
    got_writes = server.counts[Opcode.WRITE]
    getxattrs = server.counts[Opcode.GETXATTR]
    print(f"rewrite={rewrite}: {got_writes} WRITE, {getxattrs} GETXATTR")
    assert got_writes == writes
    if rewrite:
        assert getxattrs >= writes
    else:
        assert getxattrs <= 2
