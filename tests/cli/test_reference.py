"""Shell completion and the man page come from the commands' own parsers."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from fsd.cli.reference import full_parser, manpage


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fsd", *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("fsd has no subcommands")


def test_every_option_of_every_command_is_in_the_man_page_and_the_completion() -> None:
    page = manpage()
    bash = _run("completion", "bash")
    commands = _subcommands(full_parser())
    assert set(commands) >= {"serve", "mount", "allowlist", "plugins", "status"}
    for name, parser in commands.items():
        assert f".SH fsd {name}" in page
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag.replace("-", r"\-") in page, (name, flag)
                if flag.startswith("--"):
                    assert flag in bash, (name, flag)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_man_page_renders() -> None:
    page = _run("manpage")
    text = subprocess.run(
        ["groff", "-man", "-Tutf8"], input=page, capture_output=True, text=True, check=True
    ).stdout
    assert "--socket-path" in text.replace("‐", "-")
    lint = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True, text=True
    )
    assert "warning" not in lint.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str) -> None:
    script = _run("completion", shell)
    assert "serve" in script and "--shared-dir" in script
    if shell == "bash" and shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
