"""Filesystem options: crosvm's ``--cfg`` keys that fsd honours, with crosvm's defaults."""

from __future__ import annotations

from typing import Literal, get_args

import attrs

__all__ = ["CachePolicy", "FsOptions", "parse_cfg"]

CachePolicy = Literal["never", "auto", "always"]


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, not {value}")


def _cache_policy(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in get_args(CachePolicy):
        raise ValueError(f"cache must be one of never, auto, always; not {value!r}")


@attrs.frozen
class FsOptions:
    """How the passthrough filesystem answers the guest (crosvm ``virtio/fs/config.rs``).

    ``cache``: ``never`` opens files with FOPEN_DIRECT_IO, ``always`` keeps the guest page
    cache across opens (FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR), ``auto`` leaves it to the kernel.
    ``timeout`` is both the entry and attribute cache lifetime. ``negative_timeout`` > 0 lets
    the guest cache failed lookups. ``writeback`` asks for the kernel's writeback cache.
    """

    cache: CachePolicy = attrs.field(default="auto", validator=_cache_policy)
    timeout: float = attrs.field(default=5.0, converter=float, validator=_non_negative)
    negative_timeout: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    writeback: bool = False


_KEYS = {"cache": "cache", "cache_policy": "cache", "timeout": "timeout"}
_KEYS |= {"negative_timeout": "negative_timeout", "writeback": "writeback"}
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_cfg(text: str) -> FsOptions:
    """Parse crosvm's ``--cfg`` syntax: ``key=value`` joined by commas, a bare key means true.

    As in crosvm's serde_keyvalue, a bare first value is the timeout (``--cfg 10``). Unknown
    keys raise :class:`ValueError`, as crosvm's ``deny_unknown_fields`` does.
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
        field = _KEYS.get(key)
        if field is None:
            raise ValueError(f"unknown or unsupported fs option {key!r}")
        raw = raw.strip().strip("'\"")
        if field == "writeback":
            if raw.lower() not in _TRUE:
                raise ValueError(f"writeback must be true or false, not {raw!r}")
            values[field] = _TRUE[raw.lower()]
        else:
            values[field] = raw
    try:
        return FsOptions(**values)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc
