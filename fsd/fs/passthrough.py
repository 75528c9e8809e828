"""The passthrough filesystem: FUSE operations carried out on a host directory.

:class:`PassthroughFs` implements :class:`fsd.fuse.filesystem.Filesystem`. Every path
operation is relative to the parent's O_PATH fd with one validated name component and never
follows a symlink on the host, so the guest cannot walk out of the share (a symlink in the
share is returned as a symlink; the guest's kernel resolves it in the guest). Files are opened
for I/O by reopening the inode's O_PATH fd through its ``/proc/self/fd/N`` magic link
(:mod:`fsd.fs.procfd`, the same in every sandbox mode), and only regular files
and directories are ever opened (CVE-2020-35517: a host device node or fifo in the share must
not be opened by the daemon).

Operations run inline (cheap syscalls) and raise ``OSError``; the FUSE server turns that into
the errno reply. What the allowlist hides or protects is decided by the gate (fsd.fs.gate),
who acts is decided by the credentials (fsd.fs.credentials), what a read-only share refuses
by its subclass (fsd.fs.readonly), how xattr names map by a naming policy (fsd.fs.xattrs),
and whether inodes are held by fd or by file handle by the inode table (fsd.fs.inodes,
fsd.fs.file_handles).

The daemon process runs with ``os.umask(0)``: the guest has already applied its umask to
every mode it sends (DONT_MASK is not granted), so a host umask would mask modes twice. With
POSIX ACLs it is granted, and each creating call runs with the caller's umask instead
(fsd.fs.umask).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from typing import Any, Final

from fsd.allowlist.trie import Allowlist
from fsd.fs import linux, listing, procfd, xattrs
from fsd.fs.acl_ids import acl_to_guest, acl_to_host
from fsd.fs.attributes import apply_setattr
from fsd.fs.casefold import CasefoldNames
from fsd.fs.credentials import THREAD_GROUPS, Credentials, MappedCredentials
from fsd.fs.file_handles import HandleInodeTable, probe
from fsd.fs.gate import gate_for
from fsd.fs.handles import HandleTable
from fsd.fs.inodes import O_PATH_FLAGS, Inode, InodeTable
from fsd.fs.locks import LockTable
from fsd.fs.options import FsOptions
from fsd.fs.permissions import check_access
from fsd.fs.umask import umask_policy
from fsd.fuse.abi import (
    FATTR_FH,
    FOPEN_CACHE_DIR,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    RENAME_EXCHANGE,
    InitFlag,
)
from fsd.fuse.deferred import Deferred
from fsd.fuse.filesystem import (
    Context,
    DirEntry,
    Entry,
    FilesystemConfig,
    LockRange,
    Opened,
    SetattrArgs,
)

__all__ = ["PassthroughFs"]

log = logging.getLogger("fsd.fs")

_O_PATH_FLAGS: Final = O_PATH_FLAGS
#: Open flags the guest may pass through to the host; everything else (O_DIRECT unless
#: ``allow_direct_io``, O_CREAT, O_EXCL, O_NOCTTY, O_PATH, O_TMPFILE, O_NOFOLLOW...) is
#: dropped.
_PASS_FLAGS: Final = (
    os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_NONBLOCK | os.O_SYNC | os.O_DSYNC | os.O_NOATIME
)
#: What each cache policy tells the guest on OPEN (files) and OPENDIR (directories).
_FILE_OPEN_FLAGS: Final = {
    "never": FOPEN_DIRECT_IO,
    "always": FOPEN_KEEP_CACHE,
    "metadata": FOPEN_DIRECT_IO,
}
_DIR_OPEN_FLAGS: Final = {"always": FOPEN_CACHE_DIR, "metadata": FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE}
_MKNOD_KINDS: Final = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG)
_READDIRPLUS_FLAGS: Final = InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO
_DEVICE_KINDS: Final = (stat.S_IFCHR, stat.S_IFBLK)


class PassthroughFs:
    """A host directory served to one FUSE client."""

    __slots__ = (
        "_acl_maps",
        "_casefold",
        "_creds",
        "_pass_flags",
        "_posix_acl",
        "_root_dirfd",
        "_submounts",
        "_umask",
        "_xattr_names",
        "allowlist",
        "config",
        "dir_open_flags",
        "file_open_flags",
        "gate",
        "handles",
        "inodes",
        "locks",
        "options",
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> PassthroughFs:
        """``FsOptions(readonly=True)`` makes a :class:`~fsd.fs.readonly.ReadOnlyPassthroughFs`,
        whoever builds the filesystem."""
        options = kwargs.get("options", args[1] if len(args) > 1 else None)
        if cls is PassthroughFs and options is not None and options.readonly:
            from fsd.fs.readonly import ReadOnlyPassthroughFs

            return object.__new__(ReadOnlyPassthroughFs)
        return object.__new__(cls)

    def __init__(
        self,
        root: str | os.PathLike[str],
        options: FsOptions | None = None,
        *,
        allowlist: Allowlist | None = None,
    ) -> None:
        self.options = options = options if options is not None else FsOptions()
        #: The dynamic path allowlist (crosvm's); one that allows all when none is given.
        self.allowlist = allowlist if allowlist is not None else Allowlist.allow_all()
        #: What the allowlist lets the guest see and change (fsd.fs.gate).
        self.gate = gate_for(self.allowlist)
        procfd.directory()  # now, not at the first reopen: the daemon's fds stay constant
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.inodes = _inode_table(fd, options)
            # A real directory fd: syncfs(2) refuses O_PATH fds.
            self._root_dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        self.handles = HandleTable()
        #: POSIX and BSD locks the guest holds, and blocking lock requests still waiting.
        self.locks = LockTable()
        # Creating ops run with the caller's fsuid/fsgid (see fsd.fs.credentials); under
        # --uid-map/--gid-map, as the caller's host ids, and so does every op the host must
        # check for the caller (guest root need not be host root: docs/credentials.md).
        maps = options.id_maps
        self._creds = Credentials() if maps is None else MappedCredentials(maps)
        self.file_open_flags = _FILE_OPEN_FLAGS.get(options.cache, 0)
        self.dir_open_flags = _DIR_OPEN_FLAGS.get(options.cache, 0)
        self._pass_flags = _PASS_FLAGS | (os.O_DIRECT if options.allow_direct_io else 0)
        self._xattr_names = xattrs.xattr_names(
            enabled=options.xattr,
            rewrite_security=options.rewrite_security_xattrs,
            xattr_map=options.xattrmap,
            posix_acl=options.posix_acl,
        )
        self._posix_acl = options.posix_acl
        #: The id maps the ids inside ACLs go through (POSIX ACLs under --uid-map/--gid-map).
        self._acl_maps = maps if options.posix_acl else None
        #: How a creating call applies the request's umask (fsd.fs.umask).
        self._umask = umask_policy(options.posix_acl)
        self._submounts = options.announce_submounts
        #: crosvm's ascii_casefold: the host's spelling of names asked for in another case.
        self._casefold = CasefoldNames(options.timeout) if options.ascii_casefold else None
        init_flags = InitFlag.WRITEBACK_CACHE if options.writeback else InitFlag(0)
        if options.grants_killpriv_v2:
            # The server drops set-id bits when told to (and the host write drops
            # security.capability), so the guest need not GETXATTR before every WRITE
            # (answering ENODATA there instead costs one GETXATTR per WRITE). A renamed
            # security.capability is an xattr the host never drops: then the guest must
            # keep checking and removing it itself.
            init_flags |= InitFlag.HANDLE_KILLPRIV_V2
        if options.announce_submounts:
            init_flags |= InitFlag.SUBMOUNTS
        if options.allow_mmap:
            init_flags |= InitFlag.DIRECT_IO_ALLOW_MMAP
        if self._creds.enabled and THREAD_GROUPS:
            # A creating request says which supplementary group of the caller's the host
            # must count (the parent directory's): the thread takes it for the call.
            init_flags |= InitFlag.CREATE_SUPP_GROUP
        if options.posix_acl:
            # The client enforces ACLs, sends umasks unapplied, and tells SETXATTR of an
            # access ACL whether the caller keeps the set-group-ID bit (virtiofsd's three).
            init_flags |= InitFlag.POSIX_ACL | InitFlag.DONT_MASK | InitFlag.SETXATTR_EXT
        self.config = FilesystemConfig(
            entry_timeout=options.timeout,
            attr_timeout=options.timeout,
            negative_timeout=options.negative_timeout,
            init_flags=int(init_flags),
            withheld_init_flags=0 if options.readdirplus else int(_READDIRPLUS_FLAGS),
            owner_to_client=None if maps is None else (maps.uid.to_guest, maps.gid.to_guest),
            announce_submounts=options.announce_submounts,
        )

    def close(self) -> None:
        """Close every fd the filesystem holds (the root included)."""
        self.destroy()
        self.inodes.close()
        os.close(self._root_dirfd)
        os.close(self.inodes.root.fd)

    # --- helpers ---------------------------------------------------------------------------

    def _adopt(self, parent: Inode, name: bytes, fd: int) -> tuple[Inode, os.stat_result]:
        """Stat a freshly opened O_PATH fd and enter it into the inode table."""
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.inodes.adopt(fd, st, parent.child_path(name)), st

    def _lookup_child(self, parent: Inode, name: bytes) -> Entry:
        inode, st = self.inodes.lookup_child(parent, name)
        if self._submounts and st.st_dev != parent.key[0] and inode.kind == stat.S_IFDIR:
            inode.submount = True
        return inode.nodeid, st

    def _walk(self, path: bytes) -> Entry:
        """Resolve a share-relative path component by component, never following symlinks."""
        fd = os.dup(self.inodes.root.fd)
        parent_dev = dev = self.inodes.root.key[0]
        try:
            for part in path.split(b"/"):
                if part:
                    nfd = os.open(part, _O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd = nfd
                    parent_dev, dev = dev, os.fstat(fd).st_dev
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        inode = self.inodes.adopt(fd, st, path)
        if self._submounts and st.st_dev != parent_dev and inode is not self.inodes.root:
            inode.submount = True
        return inode.nodeid, st

    def _openable(self, inode: Inode, kind: int) -> None:
        if inode.kind != kind:
            if inode.kind == stat.S_IFDIR:
                raise OSError(errno.EISDIR, "is a directory")
            if kind == stat.S_IFDIR:
                raise OSError(errno.ENOTDIR, "not a directory")
            if inode.kind == stat.S_IFLNK:
                raise OSError(errno.ELOOP, "is a symlink")
            raise OSError(errno.EACCES, "refusing to open a special file on the host")

    def _open_flags(self, flags: int) -> int:
        flags &= self._pass_flags
        if self.options.writeback:
            # The guest page cache may read back what it writes and does its own appends.
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags | os.O_CLOEXEC

    def _fd(self, nodeid: int, fh: int) -> int:
        """The fd of handle ``fh``, which must be open on ``nodeid`` (EBADF otherwise).

        Every fh-based op checks the pair: plugins and the allowlist judge the request's
        nodeid, so the handle acted on must be that inode's.
        """
        return self.handles.of(fh, nodeid).fd

    # --- session ---------------------------------------------------------------------------

    def destroy(self) -> None:
        """Drop every handle and every inode but the root (the guest unmounted)."""
        self.locks.clear()
        self.handles.clear()
        self.inodes.clear()

    def path(self, nodeid: int) -> bytes | None:
        """The share-relative path of a nodeid the guest holds (as last seen)."""
        inode = self.inodes.find(nodeid)
        return None if inode is None else inode.path

    def is_submount(self, nodeid: int) -> bool:
        """Whether ``nodeid`` is a directory on another filesystem than its parent's (only
        tracked with ``announce_submounts``)."""
        inode = self.inodes.find(nodeid)
        return inode is not None and inode.submount

    # --- inodes ----------------------------------------------------------------------------

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        """Find ``name`` in ``parent`` (``.``/``..`` resolved inside the share) and count it.

        Under id maps the walk runs as the caller's host ids: reopening by /proc/self/fd
        later skips the path, so search permission on directories is checked here.
        """
        pinode = self.inodes.get(parent)
        if pinode.kind != stat.S_IFDIR:
            raise OSError(errno.ENOTDIR, "lookup in a non-directory")
        if self._creds.confines:  # (a plain call otherwise: LOOKUP is hot)
            with self._creds.acting_as(ctx.uid, ctx.gid):
                return self._lookup(pinode, name)
        return self._lookup(pinode, name)

    def _lookup(self, pinode: Inode, name: bytes) -> Entry:
        if name == b".":
            path = pinode.path
        elif name == b"..":
            path = pinode.path.rpartition(b"/")[0]
        else:
            if self._casefold is not None:
                return self._lookup_folded(pinode, name)
            self.gate.visible(pinode, name)
            return self._lookup_child(pinode, name)
        self.gate.visible_path(path)
        return self._walk(path)

    def _lookup_folded(self, pinode: Inode, name: bytes) -> Entry:
        """``name``, or else its host spelling with ASCII case folded (fsd.fs.casefold);
        the allowlist judges the name looked up (a hidden one is not found either way)."""
        try:
            self.gate.visible(pinode, name)
            return self._lookup_child(pinode, name)
        except FileNotFoundError:
            host = self._folded_name(pinode, name)
            if host == name:
                raise
        self.gate.visible(pinode, host)
        return self._lookup_child(pinode, host)

    def _folded_name(self, pinode: Inode, name: bytes) -> bytes:
        """The host's spelling of ``name`` with ASCII case folded, or ``name`` itself."""
        casefold = self._casefold
        found = None if casefold is None else casefold.find(pinode, name)
        return name if found is None else found

    def _existing_name(self, pinode: Inode, name: bytes) -> bytes:
        """The name to remove or rename: ``name``, or under ascii_casefold the host's
        spelling when only that exists (checked by the gate as well)."""
        if self._casefold is None:
            return name
        try:
            os.stat(name, dir_fd=pinode.fd, follow_symlinks=False)
            return name
        except FileNotFoundError:
            host = self._folded_name(pinode, name)
        if host != name:
            self.gate.writable(pinode, host)
        return host

    def forget(self, ctx: Context, nodeid: int, nlookup: int) -> None:
        """The guest dropped ``nlookup`` references to ``nodeid``."""
        self.inodes.forget(nodeid, nlookup)

    def getattr(self, ctx: Context, nodeid: int) -> os.stat_result:
        """Attributes of the inode itself (a symlink's own, never its target's)."""
        return os.fstat(self.inodes.get(nodeid).fd)

    def statx(self, ctx: Context, nodeid: int) -> tuple[os.stat_result, tuple[int, int] | None]:
        """GETATTR's attributes and the birth time (None if the host keeps none), for STATX."""
        fd = self.inodes.get(nodeid).fd
        return os.fstat(fd), linux.birth_time(fd)

    def setattr(self, ctx: Context, nodeid: int, attrs: SetattrArgs) -> os.stat_result:
        """Change what ``attrs.valid`` selects, through the open file if the guest named one
        (which must be open on ``nodeid``). Under id maps the changes are made, and checked
        by the host, as the caller's host ids."""
        inode = self.inodes.get(nodeid)
        self.gate.changeable(inode, is_root=inode is self.inodes.root)
        opened = bool(attrs.valid & FATTR_FH)
        fd = self._fd(nodeid, attrs.fh) if opened else inode.fd
        creds = self._creds
        with creds.confined(ctx.uid, ctx.gid):
            apply_setattr(
                fd, opened, inode.kind, attrs, lambda: os.fstat(inode.fd), creds.chown_ids
            )
        return os.fstat(inode.fd)

    def readlink(self, ctx: Context, nodeid: int) -> bytes:
        """The symlink's target, verbatim (the guest resolves it, not the host)."""
        inode = self.inodes.get(nodeid)
        if inode.kind != stat.S_IFLNK:
            raise OSError(errno.EINVAL, "not a symlink")
        return os.readlink(b"", dir_fd=inode.fd)

    def access(self, ctx: Context, nodeid: int, mask: int) -> None:
        """Check ``mask`` for the caller against the mode bits.

        Under id maps the caller's guest ids become host ids; an unmapped one matches no
        owner and is not root (it can only get the "other" bits).
        """
        st = os.fstat(self.inodes.get(nodeid).fd)
        check_access(st, mask, *self._creds.host_ids(ctx.uid, ctx.gid))

    def statfs(self, ctx: Context, nodeid: int) -> os.statvfs_result:
        """Host filesystem statistics for the filesystem holding ``nodeid``."""
        return os.fstatvfs(self.inodes.get(nodeid).fd)

    # --- creating and removing names -------------------------------------------------------

    def _new_parent(self, parent: int, name: bytes) -> Inode:
        """The directory a name is created in or removed from, if the gate allows it."""
        pinode = self.inodes.get(parent)
        self.gate.writable(pinode, name)
        if self._casefold is not None:
            self._casefold.added(pinode, name)  # a mere candidate if nothing gets created
        return pinode

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int, umask: int) -> Entry:
        """Create a directory owned by the caller."""
        pinode = self._new_parent(parent, name)
        with self._creds.acting_as(ctx.uid, ctx.gid, ctx.supp_gid), self._umask(umask):
            os.mkdir(name, stat.S_IMODE(mode), dir_fd=pinode.fd)
        return self._lookup_child(pinode, name)

    def mknod(
        self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        """Create a fifo, socket, empty file or device node, as the caller.

        Device nodes as virtiofsd and crosvm make them: the host kernel wants CAP_MKNOD of
        the caller (guest root; under id maps, only one that maps to host root) except for an
        overlayfs whiteout (character device 0/0), and the daemon never opens one
        (``_openable``).
        ``devices=false`` refuses them (EPERM), whiteouts excepted: they name no device.
        """
        kind = stat.S_IFMT(mode)
        if kind in _DEVICE_KINDS:
            if not self.options.devices and (kind != stat.S_IFCHR or rdev != 0):
                raise OSError(errno.EPERM, "device nodes are refused here (devices=false)")
        elif kind in _MKNOD_KINDS:
            rdev = 0
        else:
            raise OSError(errno.EPERM, f"mknod cannot make file type {kind:#o}")
        pinode = self._new_parent(parent, name)
        with self._creds.acting_as(ctx.uid, ctx.gid, ctx.supp_gid), self._umask(umask):
            os.mknod(name, mode, rdev, dir_fd=pinode.fd)
        return self._lookup_child(pinode, name)

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        """Create a symlink; its target is stored verbatim and never followed on the host."""
        pinode = self._new_parent(parent, name)
        with self._creds.acting_as(ctx.uid, ctx.gid, ctx.supp_gid):
            os.symlink(target, name, dir_fd=pinode.fd)
        return self._lookup_child(pinode, name)

    def link(self, ctx: Context, nodeid: int, newparent: int, newname: bytes) -> Entry:
        """A new hard link to ``nodeid`` (not to whatever a symlink points at)."""
        inode = self.inodes.get(nodeid)
        pinode = self._new_parent(newparent, newname)
        with self._creds.confined(ctx.uid, ctx.gid):
            procfd.link(inode.fd, newname, pinode.fd)
        return self._lookup_child(pinode, newname)

    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        """Remove a non-directory name (as the caller's host ids under id maps)."""
        pinode = self._new_parent(parent, name)
        name = self._existing_name(pinode, name)
        with self._creds.confined(ctx.uid, ctx.gid):
            os.unlink(name, dir_fd=pinode.fd)

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        """Remove an empty directory (as the caller's host ids under id maps)."""
        pinode = self._new_parent(parent, name)
        name = self._existing_name(pinode, name)
        with self._creds.confined(ctx.uid, ctx.gid):
            os.rmdir(name, dir_fd=pinode.fd)

    def rename(
        self, ctx: Context, parent: int, name: bytes, newparent: int, newname: bytes, flags: int
    ) -> None:
        """Rename (RENAME2 ``flags`` as renameat2) and keep the inode table's paths current."""
        pold = self._new_parent(parent, name)
        pnew = self._new_parent(newparent, newname)
        name = self._existing_name(pold, name)
        st = os.stat(name, dir_fd=pold.fd, follow_symlinks=False)
        other = None
        if flags & RENAME_EXCHANGE:
            other = os.stat(newname, dir_fd=pnew.fd, follow_symlinks=False)
        with self._creds.confined(ctx.uid, ctx.gid):
            if flags:
                linux.renameat2(pold.fd, name, pnew.fd, newname, flags)
            else:
                os.rename(name, newname, src_dir_fd=pold.fd, dst_dir_fd=pnew.fd)
        old_path, new_path = pold.child_path(name), pnew.child_path(newname)
        moves = [((st.st_dev, st.st_ino), old_path, new_path, stat.S_ISDIR(st.st_mode))]
        if other is not None:
            moves.append(
                ((other.st_dev, other.st_ino), new_path, old_path, stat.S_ISDIR(other.st_mode))
            )
        self.inodes.moved(moves)

    # --- files -----------------------------------------------------------------------------

    def open(self, ctx: Context, nodeid: int, flags: int) -> Opened:
        """Open a regular file for I/O (under id maps the host checks it as the caller)."""
        inode = self.inodes.get(nodeid)
        self._openable(inode, stat.S_IFREG)
        with self._creds.confined(ctx.uid, ctx.gid):
            fd = procfd.reopen(inode.fd, self._open_flags(flags))
        return self.handles.add(fd, nodeid), self.file_open_flags

    def create(
        self, ctx: Context, parent: int, name: bytes, flags: int, mode: int, umask: int
    ) -> tuple[Entry, Opened]:
        """Create and open a regular file.

        The exclusive create never follows a symlink planted at ``name``; if the name exists
        and the guest did not ask for O_EXCL, the existing file is opened like OPEN would
        (regular files only), so a host fifo at that name cannot block the daemon.
        """
        pinode = self._new_parent(parent, name)
        oflags = self._open_flags(flags)
        with self._creds.acting_as(ctx.uid, ctx.gid, ctx.supp_gid), self._umask(umask):
            try:
                fd = os.open(
                    name,
                    oflags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                    stat.S_IMODE(mode),
                    dir_fd=pinode.fd,
                )
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                # Still as the caller: the guest kernel believed it was creating the file
                # and checked nothing, so the host must check this open.
                return self._open_existing(pinode, name, flags)
        return self._adopt_open(pinode, name, fd)

    def _adopt_open(self, pinode: Inode, name: bytes, fd: int) -> tuple[Entry, Opened]:
        """Enter a file just created and opened as ``fd`` into both tables."""
        try:
            pfd = procfd.reopen(fd, os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        fh = self.handles.add(fd, 0)
        try:
            if name:
                inode, st = self._adopt(pinode, name, pfd)
            else:  # O_TMPFILE: no name of its own; its path is the directory's until linked
                try:
                    st = os.fstat(pfd)
                    inode = self.inodes.adopt(pfd, st, pinode.path)
                except BaseException:
                    os.close(pfd)
                    raise
        except BaseException:
            self.handles.close(fh)
            raise
        self.handles.get(fh).nodeid = inode.nodeid
        return (inode.nodeid, st), (fh, self.file_open_flags)

    def _open_existing(self, pinode: Inode, name: bytes, flags: int) -> tuple[Entry, Opened]:
        """CREATE without O_EXCL of a name that exists: OPEN it (regular files only), with
        the attributes after the open (O_TRUNC)."""
        nodeid, _ = self._lookup_child(pinode, name)
        try:
            inode = self.inodes.get(nodeid)
            self._openable(inode, stat.S_IFREG)
            fd = procfd.reopen(inode.fd, self._open_flags(flags))
            try:
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self.inodes.forget(nodeid, 1)
            raise
        return (nodeid, st), (self.handles.add(fd, nodeid), self.file_open_flags)

    def tmpfile(
        self, ctx: Context, parent: int, flags: int, mode: int, umask: int
    ) -> tuple[Entry, Opened]:
        """An unnamed regular file in ``parent`` (``O_TMPFILE``), open: like :meth:`create`.

        The guest may give it a name later with ``linkat`` (LINK), unless it passed O_EXCL.
        """
        pinode = self.inodes.get(parent)
        self.gate.writable_dir(pinode)
        # O_EXCL here means "never linkable"; _open_flags would drop it.
        oflags = self._open_flags(flags) | os.O_TMPFILE | (flags & os.O_EXCL)
        with self._creds.acting_as(ctx.uid, ctx.gid, ctx.supp_gid), self._umask(umask):
            fd = procfd.reopen(pinode.fd, oflags, stat.S_IMODE(mode))
        return self._adopt_open(pinode, b"", fd)

    def read(
        self, ctx: Context, nodeid: int, fh: int, offset: int, into: Sequence[memoryview]
    ) -> int:
        """Read straight into the reply's memory (guest RAM on virtio): no copy in Python."""
        handle = self.handles.of(fh, nodeid)  # held: keeps the fd open (fsd.fs.handles)
        return os.preadv(handle.fd, into, offset)

    def write(
        self, ctx: Context, nodeid: int, fh: int, offset: int, data: Sequence[memoryview]
    ) -> int:
        """Write straight from the request's memory; returns the bytes written."""
        handle = self.handles.of(fh, nodeid)
        return os.pwritev(handle.fd, data, offset)

    def kill_suidgid(self, ctx: Context, nodeid: int, fh: int | None) -> None:
        """HANDLE_KILLPRIV_V2: drop set-id bits the guest says a write/truncate must drop."""
        if fh is not None:
            handle = self.handles.of(fh, nodeid)
            xattrs.kill_suidgid(handle.fd)
            return
        inode = self.inodes.get(nodeid)
        if inode.kind == stat.S_IFREG:
            xattrs.kill_suidgid(inode.fd, opened=False)

    def flush(self, ctx: Context, nodeid: int, fh: int, lock_owner: int) -> None:
        """A guest process closed an fd: POSIX semantics drop its locks on the file.

        Otherwise free of syscalls on purpose (two FLUSHes per ``close`` of a dup'd fd), and
        one truth test when no lock was ever taken.
        """
        handle = self.handles.of(fh, nodeid)
        if self.locks:
            self.locks.drop_owner(handle.nodeid, lock_owner)

    def release(self, ctx: Context, nodeid: int, fh: int) -> None:
        """The guest closed its last reference to ``fh`` (closing the fd drops its flock)."""
        self.handles.of(fh, nodeid)
        self.handles.close(fh)
        # No guest process can hold a POSIX lock on a file it no longer has open.
        if self.locks and self.locks.has_inode(nodeid) and not self.handles.has_nodeid(nodeid):
            self.locks.drop_inode(nodeid)

    def fsync(self, ctx: Context, nodeid: int, fh: int, datasync: bool) -> None:
        """Flush file data (and metadata unless ``datasync``) to the host disk."""
        handle = self.handles.of(fh, nodeid)
        if datasync:
            os.fdatasync(handle.fd)
        else:
            os.fsync(handle.fd)

    def fallocate(
        self, ctx: Context, nodeid: int, fh: int, mode: int, offset: int, length: int
    ) -> None:
        """Reserve or punch space (``fallocate(2)``)."""
        handle = self.handles.of(fh, nodeid)
        if mode == 0:
            os.posix_fallocate(handle.fd, offset, length)
        else:
            linux.fallocate(handle.fd, mode, offset, length)

    def lseek(self, ctx: Context, nodeid: int, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA/SEEK_HOLE (the kernel answers SEEK_SET/CUR/END itself)."""
        handle = self.handles.of(fh, nodeid)
        return os.lseek(handle.fd, offset, whence)

    def copy_file_range(
        self,
        ctx: Context,
        nodeid_in: int,
        fh_in: int,
        off_in: int,
        nodeid_out: int,
        fh_out: int,
        off_out: int,
        length: int,
    ) -> int:
        """Copy between two open files on the host without moving data through the guest."""
        src = self.handles.of(fh_in, nodeid_in)
        dst = self.handles.of(fh_out, nodeid_out)
        return os.copy_file_range(src.fd, dst.fd, length, off_in, off_out)

    def syncfs(self, ctx: Context, nodeid: int) -> None:
        """A guest ``sync``: flush the host filesystem that holds the share."""
        self.inodes.get(nodeid)
        linux.syncfs(self._root_dirfd)

    # --- locks -----------------------------------------------------------------------------

    def getlk(
        self, ctx: Context, nodeid: int, fh: int, owner: int, start: int, end: int, kind: int
    ) -> LockRange:
        """GETLK: the lock that would conflict (start, end, type, guest pid), or F_UNLCK."""
        handle = self.handles.of(fh, nodeid)
        return self.locks.getlk(handle.nodeid, owner, handle.fd, start, end, kind)

    def setlk(
        self,
        ctx: Context,
        nodeid: int,
        fh: int,
        owner: int,
        start: int,
        end: int,
        kind: int,
        pid: int,
        flock: bool,
        wait: Deferred | None,
    ) -> bool:
        """SETLK/SETLKW: True when done; False when ``wait`` will be finished later."""
        handle = self.handles.of(fh, nodeid)
        if flock:
            return self.locks.flock(handle.fd, kind, wait)  # (early INTERRUPTs: POSIX only)
        return self.locks.setlk(handle.nodeid, owner, handle.fd, start, end, kind, pid, wait)

    def interrupt(self, ctx: Context, unique: int) -> None:
        """Stop request ``unique`` if it is a waiting lock (nothing else ever waits)."""
        self.locks.interrupt(unique)

    # --- directories -----------------------------------------------------------------------

    def opendir(self, ctx: Context, nodeid: int) -> Opened:
        """Open a directory for listing (under id maps the host checks it as the caller)."""
        inode = self.inodes.get(nodeid)
        self._openable(inode, stat.S_IFDIR)
        with self._creds.confined(ctx.uid, ctx.gid):
            fd = procfd.reopen(inode.fd, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self.handles.add(fd, nodeid), self.dir_open_flags

    def readdir(self, ctx: Context, nodeid: int, fh: int, offset: int) -> list[DirEntry | None]:
        """The directory's listing (fsd.fs.listing): offset 0 (first call, or rewinddir)
        takes a fresh snapshot, later offsets index it; names the allowlist revoked since
        become ``None``."""
        handle = self.handles.of(fh, nodeid)
        gate = self.gate
        entries = handle.entries
        if offset == 0 or entries is None:
            inode = self.inodes.get(nodeid)
            entries = handle.entries = listing.snapshot(
                handle.fd, inode.key[1], self._parent_ino(inode), gate.listing(inode)
            )
            handle.generation = gate.generation
        elif handle.generation != gate.generation:
            handle.generation = gate.generation
            listing.hide_revoked(entries, gate.listing(self.inodes.get(nodeid)))
        return entries

    def _parent_ino(self, inode: Inode) -> int:
        """The inode number ``..`` lists: the root's own at the top (nothing above shows)."""
        if inode is not self.inodes.root:
            try:
                return os.stat(b"..", dir_fd=inode.fd, follow_symlinks=False).st_ino
            except OSError:
                pass
        return inode.key[1]

    def releasedir(self, ctx: Context, nodeid: int, fh: int) -> None:
        """The guest closed the directory."""
        self.handles.of(fh, nodeid)
        self.handles.close(fh)

    def fsyncdir(self, ctx: Context, nodeid: int, fh: int, datasync: bool) -> None:
        """Flush a directory's entries to disk."""
        self.fsync(ctx, nodeid, fh, datasync)

    # --- extended attributes (fsd/fs/xattrs.py) --------------------------------------------

    def _xattr_change(self, ctx: Context, inode: Inode, name: bytes) -> tuple[int, bool]:
        """Gate SETXATTR/REMOVEXATTR, open the inode for it (as the daemon: the open only
        names it) and, under id maps, switch to the caller: ``(fd, switched)`` for
        :meth:`_xattr_done`.

        The host refuses ``trusted.*`` and ``security.*`` by capabilities that setfsuid does
        not drop (CAP_SYS_ADMIN, CAP_SETFCAP), so they are refused here for a caller whose
        host uid is not root: a file capability set by a mapped guest root would hold on the
        host.
        """
        self.gate.changeable(inode, is_root=inode is self.inodes.root)
        confines = self._creds.confines
        if confines:
            privileged = name.startswith((b"trusted.", b"security."))
            if privileged and self._creds.host_uid(ctx.uid) != 0:
                raise OSError(errno.EPERM, "privileged xattr namespace")
        fd = xattrs.opened(inode)
        try:
            return fd, confines and self._creds.switch(ctx.uid, ctx.gid)
        except BaseException:
            os.close(fd)
            raise

    def _xattr_done(self, fd: int, switched: bool) -> None:
        if switched:
            self._creds.restore()
        os.close(fd)

    def getxattr(self, ctx: Context, nodeid: int, name: bytes) -> bytes:
        """The value of xattr ``name`` (ENODATA if unset); the server does the size probe."""
        host = self._xattr_names.to_host(name, getting=True)
        value = xattrs.getxattr(self.inodes.get(nodeid), host)
        if self._acl_maps is not None and host in xattrs.ACL_NAMES:
            return acl_to_guest(value, self._acl_maps)
        return value

    def listxattr(self, ctx: Context, nodeid: int) -> list[bytes]:
        """The inode's xattr names as the guest sees them."""
        names = self._xattr_names
        return names.to_guest(xattrs.listxattr(self.inodes.get(nodeid)))

    def setxattr(
        self, ctx: Context, nodeid: int, name: bytes, value: bytes, flags: int, kill_sgid: bool
    ) -> None:
        """Set xattr ``name`` (``flags``: XATTR_CREATE / XATTR_REPLACE).

        An access ACL set for a caller the client says may not keep the set-group-ID bit
        clears it first, as virtiofsd does: the daemon has CAP_FSETID, so the host kernel,
        which would clear it for that caller, keeps it.
        """
        host = self._xattr_names.to_host(name, setting=True)
        if self._acl_maps is not None and host in xattrs.ACL_NAMES:
            value = acl_to_host(value, self._acl_maps)
        inode = self.inodes.get(nodeid)
        fd, switched = self._xattr_change(ctx, inode, host)
        try:
            if kill_sgid and self._posix_acl and host == xattrs.ACL_ACCESS:
                xattrs.clear_sgid(fd)
            xattrs.setxattr(fd, host, value, flags)
        finally:
            self._xattr_done(fd, switched)

    def removexattr(self, ctx: Context, nodeid: int, name: bytes) -> None:
        """Remove xattr ``name`` (ENODATA if unset)."""
        host = self._xattr_names.to_host(name)
        inode = self.inodes.get(nodeid)
        fd, switched = self._xattr_change(ctx, inode, host)
        try:
            xattrs.removexattr(fd, host)
        finally:
            self._xattr_done(fd, switched)


def _inode_table(root_fd: int, options: FsOptions) -> InodeTable:
    """The inode table ``inode_file_handles`` asks for, if file handles work here: ``prefer``
    falls back to O_PATH fds (with a warning), ``mandatory`` refuses (OSError)."""
    mode = options.inode_file_handles
    if mode == "never":
        return InodeTable(root_fd)
    problem = probe(root_fd)
    if problem is None:
        return HandleInodeTable(root_fd, mode)
    if mode == "mandatory":
        raise OSError(errno.EOPNOTSUPP, f"--inode-file-handles=mandatory: {problem}")
    log.warning(
        "file handles do not work here (%s): holding an O_PATH fd per inode instead",
        problem,
        extra={"inode_file_handles": "prefer", "reason": problem},
    )
    return InodeTable(root_fd)
