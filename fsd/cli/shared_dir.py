"""``--shared-dir`` in ``crosvm run``'s form: ``SRC:TAG:type=fs:key=value:...``.

VMM launch scripts written for crosvm pass the whole device description in one argument;
fsd accepts it so that they work unchanged. A plain directory (without ``:``, or naming an
existing directory) is taken as it is.
"""

from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["SharedDirSpec", "parse_shared_dir"]


class SharedDirSpec(NamedTuple):
    path: str
    tag: str | None
    cfg: str
    """The remaining ``key=value`` fields joined with ``,`` for :func:`fsd.fs.options.parse_cfg`."""


def parse_shared_dir(text: str) -> SharedDirSpec:
    """Split a ``--shared-dir`` value; raise ValueError naming what is wrong."""
    if ":" not in text or os.path.isdir(text):
        return SharedDirSpec(text, None, "")
    path, tag, *fields = text.split(":")
    if not path:
        raise ValueError(f"--shared-dir {text!r}: the source directory is empty")
    options = []
    for field in fields:
        key, eq, value = field.partition("=")
        if not eq:
            raise ValueError(f"--shared-dir {text!r}: {field!r} is not key=value")
        if key == "type":
            if value.lower() != "fs":
                raise ValueError(f"--shared-dir: type={value} is not served by fsd (only type=fs)")
            continue
        if key in ("uid", "gid", "uidmap", "gidmap"):
            raise ValueError(f"--shared-dir: {key}= is not supported by fsd")
        options.append(field)
    return SharedDirSpec(path, tag or None, ",".join(options))
