"""The uids and gids inside POSIX ACLs, through ``--uid-map``/``--gid-map``.

An ACL xattr (``system.posix_acl_access``, ``system.posix_acl_default``) names users and
groups by id: a ``posix_acl_xattr_header`` (version 2), then one ``{tag u16, perm u16, id
u32}`` entry per line. In a user namespace the kernel translates those ids at the xattr
boundary, as virtiofsd's ``--uid-map`` relies on; fsd maps ids itself, so it translates the
``ACL_USER`` and ``ACL_GROUP`` entries the same way: a guest id without a host id is refused
(EINVAL, as the kernel refuses an unmapped id), a host id without a guest id is shown as the
overflow id 65534. The other entries (owner, owning group, mask, other) carry no id.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Final

from fsd.fs.idmap import IdMaps

__all__ = ["acl_to_guest", "acl_to_host"]

_HEADER: Final = struct.Struct("<I")
_ENTRY: Final = struct.Struct("<HHI")
_VERSION: Final = 2
_ACL_USER: Final = 0x02
_ACL_GROUP: Final = 0x08


def acl_to_host(value: bytes, maps: IdMaps) -> bytes:
    """An ACL the guest sets, with host ids (EINVAL for a malformed ACL or an unmapped id)."""
    return _translate(value, maps.uid.to_host, maps.gid.to_host)


def acl_to_guest(value: bytes, maps: IdMaps) -> bytes:
    """An ACL the host holds, with guest ids. A value that is not an ACL goes back as it
    is: the guest's kernel refuses it, as it would without the map."""
    try:
        return _translate(value, maps.uid.to_guest, maps.gid.to_guest)
    except OSError:
        return value


def _translate(
    value: bytes, uid: Callable[[int], int | None], gid: Callable[[int], int | None]
) -> bytes:
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise OSError(errno.EINVAL, f"a POSIX ACL of {len(value)} bytes")
    if _HEADER.unpack_from(value)[0] != _VERSION:
        raise OSError(errno.EINVAL, "a POSIX ACL of another version than 2")
    out = bytearray(value)
    for offset in range(_HEADER.size, len(value), _ENTRY.size):
        tag, perm, ident = _ENTRY.unpack_from(value, offset)
        if tag in (_ACL_USER, _ACL_GROUP):
            mapped = (uid if tag == _ACL_USER else gid)(ident)
            if mapped is None:
                kind = "uid" if tag == _ACL_USER else "gid"
                raise OSError(errno.EINVAL, f"ACL entry for {kind} {ident}, which is not mapped")
            _ENTRY.pack_into(out, offset, tag, perm, mapped)
    return bytes(out)
