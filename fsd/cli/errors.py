"""Start-up errors: one line each, naming the option, path or plugin and what to do."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import IO

__all__ = ["StartupError", "report"]


class StartupError(Exception):
    """The daemon cannot start as asked; the message is the whole story (one line)."""


def report(prog: str, message: str, *, stream: IO[str] | None = None) -> None:
    """Write ``prog: message`` as one line to stderr (with the journal's error priority
    prefix when stderr is the journal, so it is not filed as information), and to syslog
    too when the log goes there (``--syslog``: stderr may be read by no one)."""
    from fsd.cli.logs import journal_stream

    stream = stream if stream is not None else sys.stderr
    line = " ".join(f"{prog}: {message}".split("\n"))
    prefix = "<3>" if journal_stream(stream) else ""
    stream.write(f"{prefix}{line}\n")
    stream.flush()
    logger = logging.getLogger("fsd")
    if any(isinstance(h, logging.handlers.SysLogHandler) for h in logger.handlers):
        logger.error("%s", message)
