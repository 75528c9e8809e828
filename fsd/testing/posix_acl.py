"""POSIX ACLs as Linux stores them in ``system.posix_acl_*`` xattrs, for tests to write and
compare: a ``posix_acl_xattr_header`` (version 2), then one ``{tag u16, perm u16, id u32}``
entry per line of the ACL, in the order Linux requires."""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["ACCESS", "DEFAULT", "one_user_acl"]

ACCESS: Final = "system.posix_acl_access"
DEFAULT: Final = "system.posix_acl_default"

_VERSION: Final = struct.Struct("<I")
_ENTRY: Final = struct.Struct("<HHI")
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID: Final = 0xFFFFFFFF


def one_user_acl(
    owner: int, user: int, group: int, mask: int, other: int, uid: int = 1000
) -> bytes:
    """``user::OWNER, user:UID:USER, group::GROUP, mask::MASK, other::OTHER`` (rwx bits: 4, 2,
    1) in the xattr format."""
    entries = (
        (_USER_OBJ, owner, _NO_ID),
        (_USER, user, uid),
        (_GROUP_OBJ, group, _NO_ID),
        (_MASK, mask, _NO_ID),
        (_OTHER, other, _NO_ID),
    )
    return _VERSION.pack(2) + b"".join(_ENTRY.pack(*entry) for entry in entries)
