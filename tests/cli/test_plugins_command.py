"""``fsd plugins``: what is installed, and the hooks and options of the named ones."""

from __future__ import annotations

import pytest

from fsd.cli.plugins import main


def test_lists_installed_plugins_and_the_hooks_of_named_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "audit-log" in out and "fsd_audit_log:plugin" in out and "access-policy" in out
    assert main(["--plugin", "audit-log", "--plugin", "access-policy"]) == 0
    out = capsys.readouterr().out
    assert "audit-log: fsd_addoption, fsd_allowlist_audit, fsd_configure" in out
    assert "--plugin-cfg audit-log:path=..." in out
    assert "access-policy: fsd_addoption, fsd_allowlist_check, fsd_configure" in out
    assert main(["--plugin", "nope"]) == 1
    assert "unknown plugin 'nope'" in capsys.readouterr().err
