"""``fsd --version``: the installed distribution's version, or the checkout's own."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

__all__ = ["fsd_version", "version_line"]

DISTRIBUTION = "fsd"


def fsd_version() -> str:
    """The version in the installed ``fsd`` distribution's metadata. Run from a source
    checkout that was never installed (``PYTHONPATH=.``), the version its pyproject.toml
    declares, marked ``+checkout``; ``unknown`` if there is neither."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with (Path(__file__).resolve().parents[2] / "pyproject.toml").open("rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "unknown"
    if project.get("name") != DISTRIBUTION or not isinstance(project.get("version"), str):
        return "unknown"
    return f"{project['version']}+checkout"


def version_line() -> str:
    """What ``--version`` prints: ``fsd <version>``."""
    return f"fsd {fsd_version()}"
