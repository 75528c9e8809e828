"""Fixtures for plugin tests: the same share and daemon umask as the filesystem tests."""

from tests.fs.conftest import _umask_zero, share

__all__ = ["_umask_zero", "share"]
