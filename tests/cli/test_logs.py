"""fsd's log lines (fsd.cli.logs): timestamps, JSON with the event's fields, the journal's
priority prefixes, syslog; and what a running daemon logs (issue 10, item 1)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.allowlist.client import AllowlistClient
from fsd.cli import logs
from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.unix_sockets import is_listening

REPO = Path(__file__).resolve().parents[2]
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def _record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("fsd.test").makeRecord(
        "fsd.test", logging.WARNING, __file__, 1, message, args or ("world",), None
    )
    record.__dict__.update(extra)
    return record


def test_text_lines_have_a_time_the_process_and_the_logger() -> None:
    line = logs.TextFormatter(program="fsd").format(_record())
    assert re.fullmatch(rf"{TIME} fsd\[\d+\] WARNING fsd.test: hello world", line), line


def test_json_is_one_object_with_the_events_fields() -> None:
    line = logs.JsonFormatter().format(_record(vmm_pid=42, path=Path("/x")))
    assert "\n" not in line
    event = json.loads(line)
    assert event["level"] == "warning"
    assert event["logger"] == "fsd.test"
    assert event["message"] == "hello world"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
    assert (event["vmm_pid"], event["path"]) == (42, "/x")


def test_journal_lines_carry_the_priority_and_no_time() -> None:
    assert logs.JournalFormatter().format(_record()) == "<4>fsd.test: hello world"
    info = _record()
    info.levelno, info.levelname = logging.INFO, "INFO"
    assert logs.JournalFormatter().format(info).startswith("<6>")
    assert logs.syslog_priority(logging.DEBUG) == 7
    assert logs.syslog_priority(logging.ERROR) == 3


def test_journal_stream_matches_stderrs_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "err").open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.journal_stream(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not logs.journal_stream(stream)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logs.journal_stream(stream)
    assert not logs.journal_stream(io.StringIO())


@pytest.fixture
def syslog_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for /dev/log."""
    with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(f"{d}/log")
        s.settimeout(5)
        monkeypatch.setattr(logs, "SYSLOG_SOCKET", f"{d}/log")
        yield s


def test_syslog_gets_tagged_messages(syslog_socket: socket.socket, fsd_logging: None) -> None:
    handler = logs.configure_logging(level="info", syslog=True, program="fsd-vhost-user")
    try:
        logging.getLogger("fsd.vhost_user").info("front-end connected")
        logging.getLogger("fsd.vhost_user").debug("not at info")
        data = syslog_socket.recv(4096).decode()
    finally:
        handler.close()
    # facility user (1), severity info (6): <14>
    assert data == f"<14>fsd-vhost-user[{os.getpid()}]: fsd.vhost_user: front-end connected\0"


def test_syslog_missing_falls_back_to_stderr(
    monkeypatch: pytest.MonkeyPatch, fsd_logging: None
) -> None:
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", "/nonexistent/log")
    stream = io.StringIO()
    logs.configure_logging(level="info", syslog=True, stream=stream)
    logging.getLogger("fsd").info("still logged")
    lines = stream.getvalue().splitlines()
    assert "cannot log to syslog (/nonexistent/log" in lines[0]
    assert lines[1].endswith("fsd: still logged")


@pytest.mark.parametrize(("level", "shown"), [("off", 0), ("error", 1), ("warn", 2), ("trace", 4)])
def test_virtiofsds_level_names(level: str, shown: int, fsd_logging: None) -> None:
    stream = io.StringIO()
    logs.configure_logging(level=level, stream=stream)
    log = logging.getLogger("fsd.x")
    log.error("e")
    log.warning("w")
    log.info("i")
    log.debug("d")
    assert len(stream.getvalue().splitlines()) == shown


# --- a running daemon ---------------------------------------------------------------------------


class Daemon:
    """``fsd serve`` with stderr to a file (so that it can be "the journal")."""

    def __init__(self, tmp: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.share = tmp / "share"
        self.share.mkdir(exist_ok=True)
        self.socket = tmp / "fs.sock"
        self.log = tmp / "stderr"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fsd", "serve", "--socket-path", str(self.socket),
                 "--shared-dir", str(self.share), *extra],
                stderr=err, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            )  # fmt: skip
        deadline = time.monotonic() + 20
        # The socket listens before the sandbox is entered; the server says when it serves.
        while not is_listening(self.socket) or "listening on" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "fsd serve did not listen"
            time.sleep(0.02)

    def stop(self, *, wait: bool = False) -> list[str]:
        """Its log, once it exited: by itself (``wait``: the front-end left) or on SIGTERM."""
        if not wait and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        return self.log.read_text().splitlines()


def _requests(frontend: VhostUserFrontend, count: int) -> None:
    assert fr.parse_reply(frontend.request(fr.init_request(1))).error == 0
    for i in range(count):
        assert fr.parse_reply(frontend.request(fr.getattr(2 + 2 * i, 1))).error == 0


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fsd-log-") as d:
        yield Path(d)


def test_the_daemon_logs_connection_features_and_nothing_per_request(sock_dir: Path) -> None:
    counts = []
    for requests in (1, 40):
        daemon = Daemon(sock_dir, "--allowlist-socket-path", str(sock_dir / "ctl.sock"))
        frontend = VhostUserFrontend(str(daemon.socket))
        try:
            frontend.start()
            _requests(frontend, requests)
        finally:
            frontend.close()
        lines = daemon.stop(wait=True)  # fsd exits when its one front-end leaves
        for line in lines:
            assert re.match(rf"{TIME} fsd\[\d+\] (INFO|WARNING) fsd", line), line
        text = "\n".join(lines)
        assert len(re.findall("control socket", text)) == 1
        assert re.search(r"front-end connected \(pid \d+, uid \d+, gid \d+\)", text)
        assert re.search(r"FUSE session: kernel 7\.38, replied 7\.\d+, flags 0x", text)
        counts.append(len(lines))
    assert counts[0] == counts[1]  # 39 more requests, not one more line


def test_json_log_of_a_connection_and_an_allowlist_change(sock_dir: Path) -> None:
    ctl = sock_dir / "ctl.sock"
    daemon = Daemon(sock_dir, "--log-format", "json", "--allowlist-socket-path", str(ctl))
    with AllowlistClient(ctl) as client:
        client.add(["/a", "/b/c"])
    frontend = VhostUserFrontend(str(daemon.socket))
    try:
        frontend.start()
        _requests(frontend, 1)
    finally:
        frontend.close()
    events = [json.loads(line) for line in daemon.stop()]
    change = next(e for e in events if e["message"].startswith("allowlist: add"))
    assert (change["op"], change["paths"]) == ("add", ["/a", "/b/c"])
    connected = next(e for e in events if "front-end connected" in e["message"])
    assert connected["logger"] == "fsd"
    assert connected["level"] == "info"
    assert connected["vmm_pid"] > 0 and "vmm_uid" in connected
    listening = next(e for e in events if "vhost-user: listening on" in e["message"])
    assert listening["socket"] == str(daemon.socket)


def test_under_the_journal_lines_have_priorities_and_no_time(sock_dir: Path) -> None:
    log = sock_dir / "stderr"
    log.touch()
    st = log.stat()
    daemon = Daemon(sock_dir, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    lines = daemon.stop()
    assert lines, "nothing logged"
    for line in lines:
        assert re.fullmatch(r"<[3-7]>fsd(\.[a-z_.]+)?: .*", line), line
    assert any(line.startswith("<6>fsd: vhost-user: listening on") for line in lines)


def test_a_start_up_error_under_the_journal_is_an_error(sock_dir: Path) -> None:
    err = sock_dir / "err"
    with err.open("w") as stream:
        st = os.fstat(stream.fileno())
        subprocess.run(
            [sys.executable, "-m", "fsd", "serve", "--socket-path", "/nonexistent/s",
             "--shared-dir", str(sock_dir)],
            stderr=stream, env={**os.environ, "PYTHONPATH": str(REPO),
                                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            timeout=60, check=False,
        )  # fmt: skip
    assert err.read_text().startswith("<3>fsd serve: --socket-path /nonexistent/s: directory")


def test_fsd_mount_says_it_mounted(tmp_path: Path) -> None:
    """A successful ``fsd mount`` no longer prints nothing: it logs at info by default."""
    from fsd.testing.mount import devfuse_unavailable, force_unmount

    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    (tmp_path / "share").mkdir()
    (tmp_path / "mnt").mkdir()
    err = tmp_path / "stderr"
    with err.open("w") as stream:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fsd", "mount", str(tmp_path / "share"), str(tmp_path / "mnt")],
            stderr=stream, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "serving" not in err.read_text():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        force_unmount(tmp_path / "mnt")
    text = err.read_text()
    assert re.search(rf"{TIME} fsd\[\d+\] INFO fsd.daemon.devfuse: serving .*share on .*mnt", text)
    assert "unmounting" in text
