"""docs/virtiofsd.md's option table lists exactly the options of ``fsd serve --help``, and
its claims about refusals and defaults hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fsd.cli.virtiofsd import VIRTIOFSD_DEFAULTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "virtiofsd.md"
_OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def _help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "fsd", "serve", "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def help_options() -> set[str]:
    """The option strings of the help's option lines (``  -V, --version ...``)."""
    options: set[str] = set()
    for line in _help().split("\noptions:\n", 1)[1].splitlines():
        if line.startswith("  -"):
            heading = line.strip().split("  ")[0]  # the option part, before its help
            options.update(_OPTION.findall(heading))
    return options


def table() -> dict[str, list[str]]:
    """The option table: each row's options → its four cells."""
    section = DOC.read_text().split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 4, line
        for quoted in re.findall(r"`([^`]+)`", cells[0]):
            rows[quoted.split()[0]] = cells
    return rows


def test_the_table_and_the_help_list_the_same_options() -> None:
    documented = set(table())
    shown = help_options()
    assert shown, "no options found in the help"
    assert documented - shown == set(), "documented but not in --help"
    assert shown - documented == set(), "in --help but not documented"


def test_refused_options_say_so_in_the_table_and_the_help() -> None:
    rows = table()
    text = _help()
    for option in ("--security-label",):
        assert "refused" in rows[option][3], option
        assert re.search(rf"{option}\b[^\n]*\n?[^\n]*refused", text), option
    for option in ("--sandbox", "--seccomp", "--modcaps", "--posix-acl", "--no-readdirplus"):
        assert "refused" not in rows[option][3], option
        assert "as virtiofsd" in rows[option][3], option


def test_the_defaults_table_matches_the_code() -> None:
    doc = DOC.read_text()
    assert VIRTIOFSD_DEFAULTS == {
        "xattr": False,
        "killpriv_v2": False,
        "announce_submounts": True,
        "inode_file_handles": "prefer",
        "timeout": 1.0,
    }
    for row in ("| extended attributes |", "| HANDLE_KILLPRIV_V2 |", "| submount announcement |",
                "| inode file handles |", "| cache lifetime"):  # fmt: skip
        assert row in doc
