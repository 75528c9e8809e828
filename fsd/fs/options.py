"""Filesystem options: crosvm's ``--cfg`` keys that fsd honours, with crosvm's defaults, and
the filesystem side of virtiofsd's options (the command line sets those)."""

from __future__ import annotations

from typing import Literal, get_args

import attrs

from fsd.fs.idmap import IdMap, IdMaps
from fsd.fs.xattrmap import XattrMap

__all__ = ["CachePolicy", "FileHandles", "FsOptions", "parse_cfg", "parse_cfg_values"]

CachePolicy = Literal["never", "auto", "always", "metadata"]
FileHandles = Literal["never", "prefer", "mandatory"]


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, not {value}")


def _cache_policy(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in get_args(CachePolicy):
        raise ValueError(f"cache must be one of never, auto, always, metadata; not {value!r}")


def _file_handles(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in get_args(FileHandles):
        raise ValueError(f"inode_file_handles must be never, prefer or mandatory; not {value!r}")


@attrs.frozen
class FsOptions:
    """How the passthrough filesystem answers the guest (crosvm ``virtio/fs/config.rs``, and
    virtiofsd's options of the same meaning; docs/virtiofsd.md has the whole table).

    ``cache``: ``never`` opens files with FOPEN_DIRECT_IO, ``always`` keeps the guest page
    cache across opens (FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR), ``metadata`` (virtiofsd's)
    caches directories (FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE) but not file data
    (FOPEN_DIRECT_IO), ``auto`` leaves it to the kernel.
    ``timeout`` is both the entry and attribute cache lifetime. ``negative_timeout`` > 0 lets
    the guest cache failed lookups. ``writeback`` asks for the kernel's writeback cache.
    ``rewrite_security_xattrs`` stores guest ``security.*`` xattrs (but ``security.selinux``)
    as ``user.virtiofs.security.*`` on the host. ``id_maps`` (``--uid-map``/``--gid-map``,
    not a ``--cfg`` key) translates guest ids to host ids and back; ``None`` is the identity
    at no cost (docs/credentials.md). ``devices=false`` refuses to create character and
    block device nodes (EPERM), except overlayfs whiteouts (character device 0/0, which name
    no device); fsd never opens a device node either way (docs/security.md).

    virtiofsd's: ``readonly`` answers EROFS to everything that would change the share
    (fsd.fs.readonly); ``xattr`` False answers ENOSYS to every xattr operation;
    ``xattrmap`` renames xattrs (fsd.fs.xattrmap); ``killpriv_v2`` grants
    HANDLE_KILLPRIV_V2 (``None``: fsd's choice, granted unless ``security.capability`` is
    stored under another name); ``inode_file_handles`` keeps file handles instead of an
    ``O_PATH`` fd per known inode (fsd.fs.file_handles); ``announce_submounts`` tells the
    guest which directories are mount points; ``allow_direct_io`` passes the guest's
    O_DIRECT to the host instead of dropping it; ``allow_mmap`` lets the guest mmap files
    opened with FOPEN_DIRECT_IO (``cache`` never or metadata: INIT's DIRECT_IO_ALLOW_MMAP).

    ``ascii_casefold`` (crosvm's) finds a name in any ASCII case when the guest's spelling is
    not in the directory (fsd.fs.casefold); not with ``negative_timeout``.
    ``readdirplus`` False (virtiofsd's ``--no-readdirplus``) withholds READDIRPLUS: the
    client lists with READDIR and looks each entry up itself.
    ``posix_acl`` (crosvm's key, virtiofsd's ``--posix-acl``) grants FUSE_POSIX_ACL: the
    client enforces the ACLs it reads through ``system.posix_acl_*`` and hands the caller's
    umask over (DONT_MASK) for the host to apply or to replace by a default ACL. Off, those
    two names are refused (docs/filesystem.md). It needs xattrs; under ``--uid-map``/
    ``--gid-map`` the ids in ACL entries are translated too (fsd.fs.acl_ids), and it cannot be
    combined with ``--translate-*`` rules, which need not map back.
    """

    cache: CachePolicy = attrs.field(default="auto", validator=_cache_policy)
    timeout: float = attrs.field(default=5.0, converter=float, validator=_non_negative)
    negative_timeout: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    writeback: bool = False
    rewrite_security_xattrs: bool = False
    id_maps: IdMaps | None = None
    devices: bool = True
    readonly: bool = False
    xattr: bool = True
    xattrmap: XattrMap | None = None
    killpriv_v2: bool | None = None
    inode_file_handles: FileHandles = attrs.field(default="never", validator=_file_handles)
    announce_submounts: bool = False
    allow_direct_io: bool = False
    allow_mmap: bool = False
    posix_acl: bool = False
    readdirplus: bool = True
    ascii_casefold: bool = False

    def __attrs_post_init__(self) -> None:
        if self.xattrmap is not None and self.rewrite_security_xattrs:
            raise ValueError(
                "an xattr map and rewrite_security_xattrs both rename xattrs: use one of them"
            )
        if not self.xattr and (self.xattrmap is not None or self.rewrite_security_xattrs):
            raise ValueError("xattrs are disabled, yet an xattr renaming is given")
        if self.ascii_casefold and self.negative_timeout:
            raise ValueError(
                "negative_timeout cannot be used with ascii_casefold (as in crosvm): the guest "
                "would keep a name as missing that another case of it answers"
            )
        if self.posix_acl and not self.xattr:
            raise ValueError("POSIX ACLs are xattrs: posix_acl needs xattrs on")
        maps = self.id_maps
        translated = maps is not None and not (
            isinstance(maps.uid, IdMap) and isinstance(maps.gid, IdMap)
        )
        if self.posix_acl and translated:
            raise ValueError(
                "POSIX ACLs cannot be combined with --translate-uid/--translate-gid (as in "
                "virtiofsd): ACL entries must map back and forth, and a squashing rule "
                "cannot; --uid-map/--gid-map can"
            )
        if self.killpriv_v2 and self.renames_capability:
            raise ValueError(
                "killpriv_v2 needs the host to drop security.capability on write, but it is "
                "stored under another name here: leave killpriv_v2 off"
            )

    @property
    def renames_capability(self) -> bool:
        """Whether the guest's ``security.capability`` lives under another host name."""
        if self.xattrmap is not None:
            return self.xattrmap.renames(b"security.capability")
        return self.rewrite_security_xattrs

    @property
    def grants_killpriv_v2(self) -> bool:
        """Whether HANDLE_KILLPRIV_V2 is granted: as asked, else unless the capability xattr
        is renamed (then the guest must keep checking and removing it itself)."""
        if self.killpriv_v2 is not None:
            return self.killpriv_v2
        return not self.renames_capability


_KEYS = {"cache": "cache", "cache_policy": "cache", "timeout": "timeout"}
_KEYS |= {"negative_timeout": "negative_timeout", "writeback": "writeback"}
_KEYS |= {"rewrite_security_xattrs": "rewrite_security_xattrs", "devices": "devices"}
_KEYS |= {"posix_acl": "posix_acl", "ascii_casefold": "ascii_casefold"}
_BOOL_FIELDS = frozenset(
    {"writeback", "rewrite_security_xattrs", "devices", "posix_acl", "ascii_casefold"}
)
#: crosvm keys fsd accepts only with the value that means "off", and why it has no "on".
_UNSUPPORTED = {
    "security_ctx": "security contexts (FUSE_SECURITY_CTX) are not supported; "
    "use security_ctx=false",
    "dax": "DAX is not supported by vhost-user devices",
    "use_dax": "DAX is not supported by vhost-user devices",
}
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_cfg(text: str) -> FsOptions:
    """Parse crosvm's ``--cfg`` syntax into options (see :func:`parse_cfg_values`)."""
    try:
        return FsOptions(**parse_cfg_values(text))  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc


def parse_cfg_values(text: str) -> dict[str, object]:
    """Parse crosvm's ``--cfg`` syntax: ``key=value`` joined by commas, a bare key means true.

    As in crosvm's serde_keyvalue, a bare first value is the timeout (``--cfg 10``). Unknown
    keys raise :class:`ValueError`, as crosvm's ``deny_unknown_fields`` does. crosvm keys for
    features fsd lacks (``security_ctx``, ``dax``) are
    accepted only when they turn the feature off, so a config never silently loses a feature.
    Returns the ``FsOptions`` fields the text sets (as text or bool), and no others.
    """
    values: dict[str, object] = {}
    for index, item in enumerate(filter(None, (p.strip() for p in text.split(",")))):
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            if index == 0 and key.replace(".", "", 1).isdigit():
                key, raw = "timeout", key
            else:
                raw = "true"
        raw = raw.strip().strip("'\"")
        if key in _UNSUPPORTED:
            if _TRUE.get(raw.lower()) is not False:
                raise ValueError(f"{key}={raw}: {_UNSUPPORTED[key]}")
            continue
        field = _KEYS.get(key)
        if field is None:
            raise ValueError(f"unknown or unsupported fs option {key!r}")
        if field in _BOOL_FIELDS:
            if raw.lower() not in _TRUE:
                raise ValueError(f"{field} must be true or false, not {raw!r}")
            values[field] = _TRUE[raw.lower()]
        else:
            values[field] = raw
    return values
