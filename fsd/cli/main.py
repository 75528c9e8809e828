"""``fsd <command>``: hands the arguments to the command's module, imported only when used."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["USAGE", "main", "vhost_user_main"]

USAGE = """\
usage: fsd <command> [options]
       fsd --version

commands:
  serve       serve a host directory to a VMM over vhost-user (virtio-fs)
  mount       serve a host directory through the host kernel's /dev/fuse
  allowlist   add, remove or list paths over an allowlist control socket
  plugins     list installed plugins; with --plugin NAME, their hooks and options
  status      show what a running fsd serve or fsd mount is doing (its --status-socket)
  completion  print a shell completion script: fsd completion bash|zsh
  manpage     print the fsd(1) manual page: fsd manpage > fsd.1; man ./fsd.1

`fsd <command> --help` describes each command.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """The ``fsd`` console script and ``python -m fsd``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("-V", "--version"):
        from fsd.cli.version import version_line

        sys.stdout.write(version_line() + "\n")
        return 0
    if command == "serve":
        from fsd.cli.serve import main as serve_main

        return serve_main(rest)
    if command == "mount":
        from fsd.cli.mount import main as mount_main

        return mount_main(rest)
    if command == "plugins":
        from fsd.cli.plugins import main as plugins_main

        return plugins_main(rest)
    if command == "allowlist":
        from fsd.cli.allowlist import main as allowlist_main

        return allowlist_main(rest)
    if command == "status":
        from fsd.cli.status import main as status_main

        return status_main(rest)
    if command == "completion":
        from fsd.cli.reference import main_completion

        return main_completion(rest)
    if command == "manpage":
        from fsd.cli.reference import main_manpage

        return main_manpage(rest)
    sys.stderr.write(f"fsd: unknown command {command!r}\n\n{USAGE}")
    return 2


def vhost_user_main() -> int:
    """The ``fsd-vhost-user`` console script: ``fsd serve`` as a vhost-user back-end binary."""
    from fsd.cli.serve import vhost_user_main as serve_as_backend

    return serve_as_backend()
