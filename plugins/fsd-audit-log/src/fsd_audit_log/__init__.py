"""fsd plugin ``audit-log``: one JSON line per FUSE operation and per allowlist change.

Options (``--plugin-cfg audit-log:key=value,...``):

* ``path``: file to append to, ``-`` for stderr (default ``-``);
* ``max_bytes``: rotate when the file would grow past this (default 0: never);
* ``backups``: rotated files kept, ``path.1`` newest (default 3);
* ``classes``: ``+``-separated operation classes to log, from ``read``, ``write``,
  ``metadata``, ``namespace``, ``session``, ``allowlist``, or ``all`` (default
  ``write+namespace+allowlist``).

A FUSE line::

    {"time": 1700000000.123456, "op": "WRITE", "class": "write", "path": "/a/b",
     "uid": 1000, "gid": 1000, "pid": 42, "error": 0, "bytes": 4096, "transport": "vhost-user"}

``path2`` is added for RENAME/RENAME2/LINK (the new name) and COPY_FILE_RANGE (the
destination). An allowlist line has ``"op": "allowlist_add"``/``"allowlist_remove"``,
``"paths"`` and ``"error"`` (the refusal message, or 0). SIGHUP reopens the file, for logrotate.

In fsd's sandbox the log file's directory is kept writable (``fsd_sandbox_paths``), so that
rotating and reopening go on working; a relative ``path`` is taken from the directory fsd
was started in.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any, Final

from fsd.hookinfo import OP_CLASSES
from fsd.hookspecs import hookimpl
from fsd.sandbox import HostPath
from fsd_audit_log.sink import Sink

if TYPE_CHECKING:
    from fsd.allowlist.handler import AllowlistChange
    from fsd.allowlist.protocol import Response
    from fsd.hookinfo import FuseRequestInfo
    from fsd.plugins import OptionRegistry, PluginConfig

__all__ = ["NAMESPACE", "AuditLog", "parse_classes", "plugin"]

NAMESPACE: Final = "audit-log"
DEFAULT_CLASSES: Final = "write+namespace+allowlist"


def parse_classes(text: str) -> frozenset[str]:
    """``"write+namespace"`` → ``{"write", "namespace"}``; ``"all"`` → every class."""
    names = {part.strip() for part in text.split("+") if part.strip()}
    if names == {"all"}:
        return frozenset(OP_CLASSES)
    unknown = names - set(OP_CLASSES)
    if unknown or not names:
        raise ValueError(
            f"{NAMESPACE}: classes={text!r}: use 'all' or '+'-joined names from "
            f"{', '.join(OP_CLASSES)}"
        )
    return frozenset(names)


def _int(options: dict[str, str], key: str) -> int:
    try:
        value = int(options[key])
    except ValueError:
        raise ValueError(f"{NAMESPACE}: {key}={options[key]!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{NAMESPACE}: {key} must not be negative")
    return value


class AuditLog:
    """The plugin: configured by ``fsd_configure``, or directly with :meth:`setup` in tests."""

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.classes: frozenset[str] = parse_classes(DEFAULT_CLASSES)

    def setup(
        self, path: str = "-", *, max_bytes: int = 0, backups: int = 3, classes: str = "all"
    ) -> None:
        """Open the sink and set the filter (what ``fsd_configure`` does with the options)."""
        self.classes = parse_classes(classes)
        self.close()
        if path != "-":
            path = os.path.abspath(path)  # the working directory changes in the sandbox
        self.sink = Sink(path, max_bytes=max_bytes, backups=backups)

    def close(self) -> None:
        """Close the sink; an audit call racing with this on a queue thread drops its line."""
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.close()

    def _emit(self, record: dict[str, Any]) -> None:
        sink = self.sink  # read once: close() may clear it from another thread
        if sink is not None:
            sink.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")

    # --- hooks -----------------------------------------------------------------------------

    @hookimpl
    def fsd_addoption(self, options: OptionRegistry) -> None:
        options.add(NAMESPACE, "path", "file to append JSON lines to; - for stderr", "-")
        options.add(NAMESPACE, "max_bytes", "rotate past this size (0: never)", "0")
        options.add(NAMESPACE, "backups", "rotated files to keep", "3")
        options.add(NAMESPACE, "classes", "operation classes to log, +-joined, or all",
                    DEFAULT_CLASSES)  # fmt: skip

    @hookimpl
    def fsd_configure(self, config: PluginConfig) -> None:
        options = config.options(NAMESPACE)
        self.setup(
            options["path"],
            max_bytes=_int(options, "max_bytes"),
            backups=_int(options, "backups"),
            classes=options["classes"],
        )

    @hookimpl
    def fsd_sandbox_paths(self) -> list[HostPath]:
        """The log's directory, writable: rotating renames and creates files there, and
        SIGHUP reopens the file by its path."""
        sink = self.sink
        if sink is None or sink.is_stderr:
            return []
        return [HostPath(os.path.dirname(sink.path), writable=True)]

    @hookimpl
    def fsd_fuse_audit(self, request: FuseRequestInfo, error: int, bytes_moved: int) -> None:
        if request.op_class not in self.classes:
            return
        record: dict[str, Any] = {
            "time": round(time.time(), 6),
            "op": request.op,
            "class": request.op_class,
            "path": request.entry_path,
        }
        second = request.new_entry_path if request.newname is not None else request.new_path
        if second is not None:
            record["path2"] = second
        record.update(
            uid=request.uid,
            gid=request.gid,
            pid=request.pid,
            error=error,
            bytes=bytes_moved,
            transport=request.transport,
        )
        self._emit(record)

    @hookimpl
    def fsd_allowlist_audit(self, change: AllowlistChange, response: Response) -> None:
        if "allowlist" not in self.classes:
            return
        message = getattr(response, "message", None)
        self._emit(
            {
                "time": round(time.time(), 6),
                "op": f"allowlist_{change.op}",
                "class": "allowlist",
                "paths": change.path_strings(),
                "error": message if message is not None else 0,
            }
        )

    @hookimpl
    def fsd_reload(self) -> None:
        sink = self.sink
        if sink is not None:
            sink.open()

    @hookimpl
    def fsd_daemon_stopping(self) -> None:
        self.close()


#: The object the ``audit-log`` entry point names.
plugin = AuditLog()
