"""fsd and its dependencies where an unprivileged user can import them.

The test venv's interpreter and this checkout may sit below a directory the test user
cannot enter (/root is 0700); a child running as that user then cannot start the venv's
Python or read fsd's modules. So the runtime dependencies (pure Python) and the fsd package
are copied into a world-readable directory, to be put on PYTHONPATH for the system Python.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
from pathlib import Path

from fsd.testing.guest import REPO_ROOT

__all__ = ["copy_user_site"]


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    names = []
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        match = re.match(r"[A-Za-z0-9_.-]+", requirement)
        if match:
            names.append(match.group(0))
    return names


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The importable top-level names a distribution installed."""
    tops = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".egg-info")) or first in ("..", "__pycache__"):
            continue
        tops.add(first)
    return tops


def copy_user_site(dest: Path) -> Path:
    """Copy fsd (this checkout) and the distributions it needs at run time into ``dest``,
    readable by everyone; returns ``dest``."""
    seen: set[str] = set()
    pending = _requirement_names(metadata.distribution("fsd"))
    while pending:
        name = pending.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # an environment marker left it out
            continue
        pending.extend(_requirement_names(dist))
        base = Path(str(dist.locate_file("")))
        for top in _top_level(dist):
            source = base / top
            if source.is_dir():
                shutil.copytree(source, dest / top, ignore=shutil.ignore_patterns("__pycache__"))
            elif source.is_file():
                shutil.copy(source, dest / top)
    shutil.copytree(REPO_ROOT / "fsd", dest / "fsd", ignore=shutil.ignore_patterns("__pycache__"))
    for root, _, files in os.walk(dest):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    os.chmod(dest, 0o755)
    return dest
