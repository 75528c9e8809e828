"""The source tree as a fresh clone would have it, copied for tests that build or run things
in it (pip's in-tree build writes build/ and *.egg-info next to the sources)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from fsd.testing.guest import REPO_ROOT

__all__ = ["copy_source_tree", "source_files"]


def source_files(*pathspecs: str) -> list[str]:
    """The tree's files, committed or new but not ignored, relative to the checkout."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
         *pathspecs],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return [p for p in out.decode().split("\0") if p and os.path.lexists(REPO_ROOT / p)]


def copy_source_tree(dest: Path) -> Path:
    """Copy the tree's files to ``dest``, symbolic links kept as links; returns ``dest``."""
    for name in source_files():
        source, target = REPO_ROOT / name, dest / name
        if source.is_symlink() and not source.resolve().is_relative_to(REPO_ROOT):
            continue  # e.g. a build/ linked to another checkout's: nothing a clone has
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
    return dest
