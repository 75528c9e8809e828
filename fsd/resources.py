"""Files fsd ships beside its code: the documentation and the guest test bed's sources.

In a source checkout ``fsd/docs`` and ``fsd/testing/testbed`` are symbolic links to the
checkout's ``docs/`` and ``contrib/testbed/``; the wheel carries copies at the same places.
So the same paths work from a checkout, an editable install and an installed wheel, and a
help text or an error message can name a file that exists wherever fsd runs.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DOCS", "TESTBED", "checkout_root", "doc_path", "guest_image_dir"]

_PACKAGE = Path(__file__).resolve().parent
DOCS = _PACKAGE / "docs"
"""The documentation pages (``docs/*.md`` of the source tree)."""
TESTBED = _PACKAGE / "testing" / "testbed"
"""The guest test bed's scripts and sources (``contrib/testbed/`` of the source tree)."""


def doc_path(page: str) -> Path:
    """The installed copy of a documentation page, e.g. ``doc_path("filesystem.md")``."""
    return DOCS / page


def checkout_root() -> Path | None:
    """The source checkout fsd runs from, or None for an installed wheel."""
    root = _PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "contrib" / "testbed").is_dir():
        return root
    return None


def guest_image_dir() -> Path:
    """Where the guest test bed is built: ``$FSD_TESTBED_DIR``, else the checkout's
    ``build/testbed``, else ``$XDG_CACHE_HOME/fsd/testbed`` (``~/.cache/fsd/testbed``) for an
    installed fsd, whose package directory is no place to build into."""
    configured = os.environ.get("FSD_TESTBED_DIR")
    if configured:
        return Path(configured)
    root = checkout_root()
    if root is not None:
        return root / "build" / "testbed"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fsd" / "testbed"
