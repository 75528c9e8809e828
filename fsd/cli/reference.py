"""The whole command line as one parser, for shell completion and the man page.

``fsd`` dispatches each command to its own module (fsd.cli.main) and imports it only when
used; for ``fsd completion SHELL`` and ``fsd manpage`` this module puts the commands' own
parsers together under one, so both are generated from the very options the commands parse
and cannot drift from them.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence

from fsd.cli.version import version_line

__all__ = ["full_parser", "main_completion", "main_manpage", "manpage"]

_COMMANDS = (
    ("serve", "serve a host directory to a VMM over vhost-user (virtio-fs)"),
    ("mount", "serve a host directory through the host kernel's /dev/fuse"),
    ("allowlist", "add, remove or list paths over an allowlist control socket"),
    ("plugins", "list installed plugins; with --plugin NAME, their hooks and options"),
    ("status", "show what a running fsd serve or fsd mount is doing"),
    ("completion", "print a shell completion script"),
    ("manpage", "print the fsd(1) manual page"),
)


def _command_parser(name: str) -> argparse.ArgumentParser:
    if name == "serve":
        from fsd.cli.serve import _parser

        return _parser("fsd serve", "fsd")
    if name == "mount":
        from fsd.cli.mount import parser

        return parser()
    if name == "allowlist":
        from fsd.cli.allowlist import _parser as allowlist_parser

        return allowlist_parser()
    if name == "plugins":
        from fsd.cli.plugins import parser as plugins_parser

        return plugins_parser()
    if name == "status":
        from fsd.cli.status import _parser as status_parser

        return status_parser()
    p = argparse.ArgumentParser(prog=f"fsd {name}")
    if name == "completion":
        p.add_argument("shell", choices=["bash", "zsh"])
    return p


def full_parser() -> argparse.ArgumentParser:
    """``fsd`` with every command as a sub-command built from the command's own parser."""
    top = argparse.ArgumentParser(prog="fsd", description="A virtio-fs device daemon.")
    top.add_argument("-V", "--version", action="version", version=version_line())
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in _COMMANDS:
        own = _command_parser(name)
        sub = commands.add_parser(
            name, help=help_text, description=own.description, add_help=False, parents=[own]
        )
        sub.prog = f"fsd {name}"
    return top


def main_completion(argv: Sequence[str]) -> int:
    """``fsd completion bash|zsh``: the completion script on stdout (shtab)."""
    args = _command_parser("completion").parse_args(list(argv))
    import shtab

    sys.stdout.write(shtab.complete(full_parser(), shell=args.shell))
    return 0


def main_manpage(argv: Sequence[str]) -> int:
    """``fsd manpage``: fsd(1) in roff on stdout (``fsd manpage > fsd.1; man ./fsd.1``)."""
    _command_parser("manpage").parse_args(list(argv))
    sys.stdout.write(manpage())
    return 0


def manpage() -> str:
    """fsd(1): one section per command, each option with its help text."""
    out = [
        f'.TH FSD 1 "{datetime.date.today():%Y-%m-%d}" "{version_line()}" "User Commands"',
        ".SH NAME",
        r"fsd \- a virtio-fs device daemon (vhost-user back-end), with a dynamic path "
        "allowlist and plugin hooks",
        ".SH SYNOPSIS",
    ]
    for name, _ in _COMMANDS:
        out += [".B fsd " + name, r"[\fIoptions\fR]", ".br"]
    out += [".SH DESCRIPTION", _roff(full_parser().description or "")]
    for name, help_text in _COMMANDS:
        own = _command_parser(name)
        out += [f".SH fsd {name}", _roff(own.description or help_text)]
        for action in own._actions:
            if action.help == argparse.SUPPRESS:
                continue
            out += [".TP", rf"\fB{_roff(_synopsis(action))}\fR", _roff(str(action.help or ""))]
    out += [
        ".SH SEE ALSO",
        "The documentation installed with fsd (python3 -c 'import fsd.resources; "
        "print(fsd.resources.DOCS)'): getting-started.md, virtiofsd.md, allowlist.md, "
        "plugins.md, security.md, status.md.",
    ]
    return "\n".join(out) + "\n"


def _synopsis(action: argparse.Action) -> str:
    """``--flag METAVAR`` (or the positional's name) as the option list shows it."""
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    shown = metavar if isinstance(metavar, str) else " ".join(metavar)
    if not action.option_strings:
        return shown
    flags = ", ".join(action.option_strings)
    return flags if action.nargs == 0 else f"{flags} {shown}"


def _roff(text: str) -> str:
    """``text`` safe in roff: backslashes doubled, no line starting with a control dot."""
    text = text.replace("\\", "\\\\").replace("-", r"\-")
    return "\n".join(("\\&" + line if line.startswith((".", "'")) else line) for line in
                     text.splitlines())  # fmt: skip
