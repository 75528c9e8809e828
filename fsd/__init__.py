"""fsd: a virtio-fs device daemon (vhost-user backend) in Python."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``fsd.__version__``, looked up only when asked for (see :mod:`fsd.cli.version`)."""
    if name == "__version__":
        from fsd.cli.version import fsd_version

        return fsd_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
