"""The audit-log plugin: JSON lines, rotation, class filter, allowlist lines, reopen."""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fsd_audit_log import AuditLog, parse_classes
from fsd_audit_log.sink import Sink

from fsd.allowlist.handler import AllowlistChange, handle_packet
from fsd.allowlist.protocol import Ok
from fsd.allowlist.trie import Allowlist
from fsd.plugins import PluginError, Plugins
from fsd.testing import fuse_requests as fr
from fsd.testing.plugins import Recorder, hooked_client, plugin_manager


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def audit(log: Path, classes: str) -> tuple[AuditLog, Plugins]:
    """The plugin configured as ``--plugin-cfg audit-log:path=LOG,classes=...`` would."""
    plugin = AuditLog()
    manager = plugin_manager(plugin, options={"audit-log": {"path": str(log), "classes": classes}})
    return plugin, manager


def test_one_line_per_operation_with_paths_ids_result_bytes(share: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _, manager = audit(log, "all")
    with hooked_client(share, manager) as c:
        entry, fh = c.create(1, "f", os.O_RDWR)
        c.write(entry.nodeid, fh, 0, b"abc")
        c.read(entry.nodeid, fh, 0, 10)
        c.ok(fr.rename(c.next_unique(), 1, "f", 1, "g"))
        assert c.errno_of(fr.lookup(c.next_unique(), 1, "nope")) == errno.ENOENT
    records = lines(log)
    by_op = {r["op"]: r for r in records}
    assert by_op["CREATE"]["path"] == "/f" and by_op["CREATE"]["class"] == "namespace"
    assert (by_op["WRITE"]["bytes"], by_op["READ"]["bytes"]) == (3, 3)
    assert (by_op["RENAME"]["path"], by_op["RENAME"]["path2"]) == ("/f", "/g")
    assert by_op["LOOKUP"]["error"] == errno.ENOENT
    assert set(by_op["WRITE"]) == {
        "time", "op", "class", "path", "uid", "gid", "pid", "error", "bytes", "transport",
    }  # fmt: skip
    assert records[0]["op"] == "INIT"


def test_class_filter(share: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _, manager = audit(log, "write")
    with hooked_client(share, manager) as c:
        entry, fh = c.create(1, "f", os.O_RDWR)
        c.write(entry.nodeid, fh, 0, b"abc")
        c.getattr(entry.nodeid)
    assert [r["op"] for r in lines(log)] == ["WRITE"]
    assert parse_classes("all") >= {"read", "allowlist"}
    with pytest.raises(ValueError, match="classes='reads'"):
        parse_classes("reads")


def test_bad_options_stop_startup(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="max_bytes='lots' is not an integer"):
        plugin_manager(AuditLog(), options={"audit-log": {"max_bytes": "lots"}})
    with pytest.raises(PluginError, match="classes"):
        plugin_manager(AuditLog(), options={"audit-log": {"classes": "everything"}})


def test_rotation_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "log"
    sink = Sink(str(path), max_bytes=100, backups=2)
    for i in range(30):
        sink.write(f"line {i:02d} {'x' * 20}\n".encode())
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["log", "log.1", "log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 100
    assert path.read_text().splitlines()[-1].startswith("line 29")
    assert (tmp_path / "log.1").read_text().splitlines()[-1] < path.read_text().splitlines()[0]


def test_two_threads_rotating_lose_no_line_and_close_no_foreign_fd(tmp_path: Path) -> None:
    """Two queue threads audit through one rotating sink while a third opens files, as the
    filesystem does for the guest: no line may be lost, and no descriptor the sink does not
    own may be closed (or written to) by it."""
    path = tmp_path / "audit.log"
    sink = Sink(str(path), max_bytes=20_000, backups=50)  # enough backups to keep every line
    count, errors, foreign_closed = 3000, [], []
    stop = threading.Event()

    def write(tag: str) -> None:
        for i in range(count):
            try:
                sink.write(f'{{"t":"{tag}","i":{i}}}\n'.encode())
            except OSError as exc:
                errors.append(exc)

    def open_files() -> None:
        k = 0
        while not stop.is_set():
            fd = os.open(tmp_path / f"guest{k % 20}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.close(fd)
            except OSError:
                foreign_closed.append(fd)
            k += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    opener = threading.Thread(target=open_files)
    writers = [threading.Thread(target=write, args=(tag,)) for tag in "AB"]
    try:
        opener.start()
        for t in writers:
            t.start()
        for t in writers:
            t.join()
    finally:
        stop.set()
        opener.join()
        sys.setswitchinterval(interval)
    sink.close()
    sink.close()  # twice is harmless
    sink.write(b"dropped after close\n")
    written = [
        json.loads(line) for p in tmp_path.glob("audit.log*") for line in p.read_text().splitlines()
    ]
    assert not errors and not foreign_closed
    assert sorted((r["t"], r["i"]) for r in written) == [(t, i) for t in "AB" for i in range(count)]
    assert all(p.stat().st_size == 0 for p in tmp_path.glob("guest*"))


def test_close_racing_with_an_audit_call_is_harmless(tmp_path: Path) -> None:
    """The daemon's thread closes (``fsd_daemon_stopping``) while a queue thread audits: the
    audit must read ``sink`` once, not test it and then find None."""
    log = tmp_path / "log"

    class ClosedBetweenReads(AuditLog):
        """``sink`` is cleared right after each read, as a racing close() would."""

        _next: Sink | None = None
        opened: Sink | None = None

        @property
        def sink(self) -> Sink | None:
            sink, self._next = self._next, None
            return sink

        @sink.setter
        def sink(self, value: Sink | None) -> None:
            self._next = self.opened = value

    plugin = ClosedBetweenReads()
    plugin.setup(str(log), classes="allowlist")
    plugin.fsd_allowlist_audit(AllowlistChange("add", ()), Ok())  # must not raise
    assert lines(log)[0]["op"] == "allowlist_add"
    assert plugin.opened is not None
    plugin.opened.close()
    sink = Sink(str(log))
    sink.close()
    sink.write(b"dropped\n")  # a closed sink drops the line instead of writing to fd -1
    assert len(lines(log)) == 1


def test_reload_reopens_after_outside_rotation(tmp_path: Path) -> None:
    path = tmp_path / "log"
    _, manager = audit(path, "allowlist")
    manager.reload()  # no file change: harmless
    path.rename(tmp_path / "log.old")
    manager.reload()  # what the daemon does on SIGHUP
    handle_packet(Allowlist(), b'{"AddPaths":{"paths":["/a"]}}', after=manager.allowlist_audit)
    assert lines(path)[0]["op"] == "allowlist_add"


def test_allowlist_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _, manager = audit(log, "allowlist")
    check, after = manager.allowlist_callbacks()
    allowlist = Allowlist()
    handle_packet(allowlist, b'{"AddPaths":{"paths":["/a/../b"]}}', check=check, after=after)
    handle_packet(allowlist, b'{"RemovePaths":{"paths":["/zzz"]}}', check=check, after=after)
    first, second = lines(log)
    assert (first["op"], first["paths"], first["error"]) == ("allowlist_add", ["/b"], 0)
    assert second["op"] == "allowlist_remove" and isinstance(second["error"], str)


def test_audit_log_beside_another_plugin(share: Path, tmp_path: Path) -> None:
    """A denial by another plugin is logged with its errno."""
    log = tmp_path / "log"
    _, manager = audit(log, "namespace")
    rec = Recorder()
    rec.deny = lambda r: errno.EPERM if r.name == "x" else None
    manager.register(rec)
    with hooked_client(share, manager) as c:
        c.errno_of(fr.mkdir(c.next_unique(), 1, "x"))
    assert [(r["op"], r["path"], r["error"]) for r in lines(log)] == [("MKDIR", "/x", errno.EPERM)]
