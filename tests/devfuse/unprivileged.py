"""Running a test's client as an unprivileged user."""

from __future__ import annotations

import os
import shutil

import pytest


def system_python() -> str:
    """A Python the unprivileged user can run (the venv's may live under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    found = shutil.which("python3", path="/usr/bin:/bin")
    if found is None:
        pytest.skip("no system python3 for the unprivileged user")
    return found
