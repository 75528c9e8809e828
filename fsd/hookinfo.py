"""The values plugin hooks receive: what a FUSE request is about, who the daemon and VMM are.

Plain frozen values with slots, built only when some plugin implements a FUSE hook, so that
plugins see paths and names as ``str`` (``os.fsdecode``: undecodable bytes survive as
surrogates) and never touch request bytes or the inode table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, Final, Literal, NamedTuple

from fsd.fuse.abi import FATTR_MODE, Opcode
from fsd.fuse.requests import OPS, Request

__all__ = [
    "OP_CLASSES",
    "DaemonInfo",
    "FuseRequestInfo",
    "OpClass",
    "VmmInfo",
    "describe",
    "op_class_of",
    "writes_of",
]

OpClass = Literal["read", "write", "metadata", "namespace", "session"]
"""Coarse operation classes, for filters and rate limits (``allowlist`` is the control socket)."""

OP_CLASSES: Final[tuple[str, ...]] = (
    "read",
    "write",
    "metadata",
    "namespace",
    "session",
    "allowlist",
)

_CLASS_OF: Final[dict[int, OpClass]] = {
    **dict.fromkeys(
        (Opcode.READ, Opcode.READDIR, Opcode.READDIRPLUS, Opcode.READLINK, Opcode.OPEN,
         Opcode.OPENDIR, Opcode.RELEASE, Opcode.RELEASEDIR, Opcode.FLUSH, Opcode.LSEEK,
         Opcode.GETXATTR, Opcode.LISTXATTR, Opcode.GETLK, Opcode.POLL, Opcode.BMAP),
        "read",
    ),
    **dict.fromkeys(
        (Opcode.WRITE, Opcode.FALLOCATE, Opcode.COPY_FILE_RANGE, Opcode.FSYNC,
         Opcode.FSYNCDIR, Opcode.SYNCFS, Opcode.SETLK, Opcode.SETLKW, Opcode.IOCTL,
         Opcode.SETUPMAPPING, Opcode.REMOVEMAPPING),
        "write",
    ),
    **dict.fromkeys(
        (Opcode.LOOKUP, Opcode.GETATTR, Opcode.SETATTR, Opcode.ACCESS, Opcode.STATFS,
         Opcode.SETXATTR, Opcode.REMOVEXATTR, Opcode.STATX),
        "metadata",
    ),
    **dict.fromkeys(
        (Opcode.CREATE, Opcode.MKDIR, Opcode.MKNOD, Opcode.SYMLINK, Opcode.LINK,
         Opcode.UNLINK, Opcode.RMDIR, Opcode.RENAME, Opcode.RENAME2, Opcode.TMPFILE),
        "namespace",
    ),
}  # fmt: skip

#: Operations that change the host's files or directories whatever their arguments.
_WRITES: Final = frozenset(
    {Opcode.WRITE, Opcode.FALLOCATE, Opcode.COPY_FILE_RANGE, Opcode.SETATTR, Opcode.SETXATTR,
     Opcode.REMOVEXATTR, Opcode.CREATE, Opcode.MKDIR, Opcode.MKNOD, Opcode.SYMLINK, Opcode.LINK,
     Opcode.UNLINK, Opcode.RMDIR, Opcode.RENAME, Opcode.RENAME2, Opcode.TMPFILE}
)  # fmt: skip
_OPEN_WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


def op_class_of(opcode: int, flags: int | None = None) -> OpClass:
    """The class of an operation; OPEN counts as ``write`` when it opens for writing."""
    if opcode == Opcode.OPEN and flags is not None and flags & _OPEN_WRITE_FLAGS:
        return "write"
    return _CLASS_OF.get(opcode, "session")


def writes_of(opcode: int, flags: int | None = None) -> bool:
    """Whether an operation may change host files (OPEN and CREATE count by their flags)."""
    if opcode == Opcode.OPEN:
        return flags is not None and bool(flags & _OPEN_WRITE_FLAGS)
    return opcode in _WRITES


def _join(directory: str | None, name: str | None) -> str | None:
    if directory is None or name is None:
        return directory
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


class FuseRequestInfo(NamedTuple):
    """One FUSE request as plugins see it, decoded before the filesystem runs it.

    A NamedTuple (immutable, no per-instance dict) rather than a frozen dataclass: it is built
    for every request while a FUSE hook is in use, and builds in ~0.6 µs instead of ~3.8 µs.

    Paths are share-relative with a leading ``/`` (``"/"`` is the share root) and reflect the
    inode table at the time of the request; ``None`` when the nodeid is unknown (the server
    will answer that request with an error anyway). For the name operations (LOOKUP, CREATE,
    MKDIR, MKNOD, SYMLINK, UNLINK, RMDIR, RENAME, RENAME2) ``path`` is the directory and
    ``name`` the entry in it; RENAME/RENAME2 also fill ``new_path``/``newname``. LINK is the
    exception: ``path`` is the existing file, ``new_path``/``newname`` the new link's directory
    and name. ``target`` is SYMLINK's link text.
    """

    op: str
    """Opcode name, e.g. ``"LOOKUP"`` (``"OPCODE_99"`` for one fsd does not know)."""
    opcode: int
    unique: int
    nodeid: int
    path: str | None
    uid: int
    gid: int
    pid: int
    transport: Literal["vhost-user", "dev-fuse"]
    op_class: OpClass
    writes: bool
    """True when the operation may change host files (OPEN only when opening for writing)."""
    name: str | None = None
    new_path: str | None = None
    newname: str | None = None
    target: str | None = None
    flags: int | None = None
    """OPEN/CREATE open flags, RENAME2 renameat2 flags, SETATTR's ``valid`` bits."""
    mode: int | None = None
    """CREATE/MKDIR/MKNOD mode, SETATTR mode (when FATTR_MODE is set)."""
    offset: int | None = None
    size: int | None = None
    """READ/WRITE/READDIR offset and size (requested, not moved: see the audit hook)."""

    @property
    def entry_path(self) -> str | None:
        """The path the operation acts on: ``path``/``name`` for name operations, else ``path``."""
        return _join(self.path, self.name)

    @property
    def new_entry_path(self) -> str | None:
        """The second path of RENAME/RENAME2/LINK (``new_path``/``newname``), else None."""
        if self.newname is None:
            return None
        return _join(self.new_path, self.newname)

    def paths(self) -> tuple[str, ...]:
        """Every known path the operation touches (one or two), for policies and logs."""
        first, second = self.entry_path, self.new_entry_path
        return tuple(p for p in (first, second) if p is not None)


PathOf = Callable[[int], "str | None"]
"""A nodeid's path as plugins see it (``None`` if unknown)."""

Transport = Literal["vhost-user", "dev-fuse"]

#: Decoded arguments plugins see under their own names (the field names of ``fuse.requests.OPS``).
_SHOWN: Final = ("name", "newname", "target", "flags", "mode", "offset", "size")
_OP_NAMES: Final = {int(op): op.name for op in Opcode}


def describe(req: Request, path_of: PathOf, transport: Transport) -> FuseRequestInfo:
    """What plugins see of a decoded request: nothing is parsed again here."""
    opcode = req.opcode
    path = path_of(req.nodeid)
    extra: dict[str, Any] = {}
    op = OPS.get(opcode)
    if op is not None and op.fields:
        args = dict(zip(op.fields, req.args, strict=False))
        extra = {field: args[field] for field in _SHOWN if field in args}
        if "newdir" in args:  # RENAME, RENAME2
            extra["new_path"] = path_of(args["newdir"])
        elif "nodeid_out" in args:  # COPY_FILE_RANGE: the destination file
            extra["new_path"] = path_of(args["nodeid_out"])
        elif "oldnodeid" in args:  # LINK: the existing file, and where the new link goes
            extra["new_path"], path = path, path_of(args["oldnodeid"])
        if opcode == Opcode.SETATTR:
            valid = args["valid"]
            extra = {"flags": valid, "mode": args["mode"] if valid & FATTR_MODE else None}
    for field in ("name", "newname", "target"):
        if field in extra:
            extra[field] = os.fsdecode(extra[field])
    flags = extra.pop("flags", None)
    return FuseRequestInfo(
        _OP_NAMES.get(opcode) or f"OPCODE_{opcode}", opcode, req.unique, req.nodeid, path,
        req.uid, req.gid, req.pid, transport, op_class_of(opcode, flags),
        writes=writes_of(opcode, flags), flags=flags, **extra,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonInfo:
    """What a daemon serves and where, for lifecycle hooks."""

    shared_dir: str
    transport: Literal["vhost-user", "dev-fuse"]
    endpoint: str | None
    """The vhost-user socket path or the mount point (None for an inherited ``--fd``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class VmmInfo:
    """The front-end process connected over vhost-user (``SO_PEERCRED``; -1 if unknown)."""

    pid: int = -1
    uid: int = -1
    gid: int = -1
