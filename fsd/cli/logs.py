"""Where fsd's log lines go and what they look like: one set-up for ``fsd serve`` and
``fsd mount``.

* a terminal or a file: ``2026-01-31 12:00:00.123 fsd[42] INFO fsd.vhost_user: message``;
* the systemd journal (``$JOURNAL_STREAM`` names stderr's device and inode, as systemd sets it
  for a service's stderr): ``<6>fsd.vhost_user: message``, no time (the journal adds it) and
  the ``<N>`` syslog priority prefix that journald reads (sd-daemon(3)), no libsystemd needed;
* ``--syslog`` (virtiofsd's option): the local syslog socket /dev/log, as ``fsd[42]:``;
* ``--log-format json``: one JSON object per line with ``time``, ``level``, ``logger``,
  ``message`` and the event's structured fields (what the code passed as ``extra=``), to
  whichever of the above is in use.

Levels are virtiofsd's names (``error``, ``warn``, ``info``, ``debug``, ``trace``, ``off``;
``warning`` too). Nothing per request is logged above ``debug``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import logging.handlers
import os
import socket
import sys
from typing import IO, Final

__all__ = [
    "LEVELS",
    "JournalFormatter",
    "JsonFormatter",
    "TextFormatter",
    "add_logging_arguments",
    "configure_logging",
    "journal_stream",
    "log_as_pid",
]

#: ``--log-level`` values: virtiofsd's names, and ``warning``.
LEVELS: Final = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
    "off": logging.CRITICAL + 10,
}
SYSLOG_SOCKET: Final = "/dev/log"
#: The LogRecord attributes every record has: the rest came from ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
#: syslog priorities (RFC 5424 severities) of the logging levels.
_PRIORITY: Final = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def add_logging_arguments(parser: argparse.ArgumentParser, *, default_level: str) -> None:
    """``--log-level``, ``--log-format`` and ``--syslog``."""
    parser.add_argument(
        "--log-level",
        default=default_level,
        choices=list(LEVELS),
        metavar="LEVEL",
        help=f"error, warn, info, debug, trace or off (default: {default_level}; trace is debug)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text, or json: one object per line with the event's fields (default: text)",
    )
    parser.add_argument(
        "--syslog",
        action="store_true",
        help=f"log to syslog ({SYSLOG_SOCKET}) instead of stderr; under systemd, stderr "
        "already goes to the journal",
    )


def structured_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields the event was logged with (``extra=``), JSON-friendly (what JSON cannot
    hold as it is becomes its ``str``)."""
    fields: dict[str, object] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = str(value)
        fields[key] = value
    return fields


class TextFormatter(logging.Formatter):
    """``TIME fsd[PID] LEVEL logger: message`` (``with_time=False``: without the time)."""

    def __init__(self, *, program: str = "fsd", with_time: bool = True) -> None:
        super().__init__()
        self.program = program
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.program}[{record.process}] {record.levelname} {record.name}: "
        line += record.getMessage()
        if self.with_time:
            when = datetime.datetime.fromtimestamp(record.created).astimezone()
            line = f"{when.isoformat(sep=' ', timespec='milliseconds')} {line}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``: journald reads the priority from the prefix and keeps the
    time itself. A traceback stays in the same entry (newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"<{syslog_priority(record.levelno)}>" + text.replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the event's fields."""

    def __init__(self, *, priority_prefix: bool = False) -> None:
        super().__init__()
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        event: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in structured_fields(record).items():
            event.setdefault(key, value)
        if record.exc_info:
            event["traceback"] = self.formatException(record.exc_info)
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        return f"<{syslog_priority(record.levelno)}>{line}" if self.priority_prefix else line


class _SyslogHandler(logging.handlers.SysLogHandler):
    """RFC 3164 lines to /dev/log with the ``fsd[pid]:`` tag (the stdlib leaves it out)."""

    def __init__(self, program: str) -> None:
        super().__init__(address=SYSLOG_SOCKET)
        self.ident = f"{program}[{os.getpid()}]: "


def syslog_priority(levelno: int) -> int:
    """The syslog severity of a logging level (debug is 7)."""
    for threshold, priority in _PRIORITY:
        if levelno >= threshold:
            return priority
    return 7


def journal_stream(stream: IO[str]) -> bool:
    """Whether ``stream`` is connected to the journal: ``$JOURNAL_STREAM`` is the
    ``device:inode`` of it (systemd.exec(5))."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def configure_logging(
    *,
    level: str = "info",
    log_format: str = "text",
    syslog: bool = False,
    program: str = "fsd",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send the ``fsd`` loggers' records to one handler, replacing any earlier one of ours.

    The root logger is left alone (a program embedding fsd keeps its own logging); the
    ``fsd`` logger gets the handler and the level. Returns the handler."""
    stream = stream if stream is not None else sys.stderr
    handler: logging.Handler
    problem = None
    if syslog:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(SYSLOG_SOCKET)
            handler = _SyslogHandler(program)
        except OSError as exc:
            problem = f"cannot log to syslog ({SYSLOG_SOCKET}: {exc.strerror}); logging to stderr"
            syslog = False
    journal = not syslog and journal_stream(stream)
    if syslog:
        formatter: logging.Formatter = (
            JsonFormatter() if log_format == "json" else logging.Formatter("%(name)s: %(message)s")
        )
    else:
        handler = logging.StreamHandler(stream)
        if log_format == "json":
            formatter = JsonFormatter(priority_prefix=journal)
        elif journal:
            formatter = JournalFormatter()
        else:
            formatter = TextFormatter(program=program)
    handler.setFormatter(formatter)
    handler.set_name("fsd")
    logger = logging.getLogger("fsd")
    for old in [h for h in logger.handlers if h.get_name() == "fsd"]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(LEVELS[level])
    if problem is not None:
        logger.warning("%s", problem)
    return handler


class _AsPid(logging.Filter):
    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def filter(self, record: logging.LogRecord) -> bool:
        record.process = self.pid
        return True


def log_as_pid(pid: int) -> None:
    """Write ``pid`` as the process id of the ``fsd`` loggers' lines: the sandboxed server's
    pid as the host sees it, where its own getpid() says 1 (pid 1 of its pid namespace)."""
    for handler in logging.getLogger("fsd").handlers:
        if handler.get_name() == "fsd":
            for old in [f for f in handler.filters if isinstance(f, _AsPid)]:
                handler.removeFilter(old)
            if pid != os.getpid():
                handler.addFilter(_AsPid(pid))
