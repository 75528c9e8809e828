"""The filesystem layer: a host directory served through FUSE operations."""

from fsd.fs.options import CachePolicy, FsOptions, parse_cfg
from fsd.fs.passthrough import PassthroughFs

__all__ = ["CachePolicy", "FsOptions", "PassthroughFs", "parse_cfg"]
