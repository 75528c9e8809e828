"""fsd's command line: one module per command, the options they share, and the process
set-up every entry point does before ``trio.run``.

:mod:`fsd.cli.main` dispatches ``fsd <command>``; :mod:`fsd.cli.serve`, :mod:`fsd.cli.mount`,
:mod:`fsd.cli.allowlist` and :mod:`fsd.cli.plugins` are the commands;
:mod:`fsd.cli.arguments` and :mod:`fsd.cli.shared_dir` the option syntax;
:mod:`fsd.cli.process` the process-wide set-up; :mod:`fsd.cli.version` ``--version``.
"""

from fsd.cli.main import main, vhost_user_main

__all__ = ["main", "vhost_user_main"]
