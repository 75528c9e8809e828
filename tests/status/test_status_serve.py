"""``fsd status`` against a real ``fsd serve`` driven by the scripted front-end: what it shows
matches what the front-end did, every format parses, the socket is its owner's only, and
asking does not disturb the requests in flight."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsd.allowlist.client import AllowlistClient
from fsd.status.client import fetch
from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.guest import unix_socket_listening
from fsd.testing.serve import ServeProcess
from tests.status.exposition import parse_exposition, sample_value

ROOT = 1


class Daemon:
    """A running ``fsd serve`` with a status socket and an allowlist, in a private directory."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.share = root / "share"
        self.share.mkdir()
        self.status_socket = root / "status.sock"
        self.control = root / "ctl.sock"
        self.process = ServeProcess(
            self.share,
            root / "vhost.sock",
            "--status-socket",
            str(self.status_socket),
            "--allowlist-socket-path",
            str(self.control),
            *extra,
        )
        # The vhost-user socket listens first (ServeProcess waits for it), the others after.
        deadline = time.monotonic() + 20
        while not unix_socket_listening(self.status_socket):
            assert time.monotonic() < deadline, "the status socket never listened"
            time.sleep(0.02)

    def status(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``fsd status --socket S ARGS`` as a separate process, as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "fsd", "status", "--socket", str(self.status_socket), *args],
            capture_output=True, text=True, timeout=30, check=check,
        )  # fmt: skip

    def allow(self, *paths: str) -> None:
        with AllowlistClient(str(self.control)) as client:
            client.add(paths)

    def document(self) -> dict[str, Any]:
        doc = json.loads(self.status("--json").stdout)
        assert isinstance(doc, dict)
        return doc


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory only root can enter, short enough for socket paths."""
    with tempfile.TemporaryDirectory(prefix="fsd-status-") as d:
        yield Path(d)


@pytest.fixture
def daemon(private_dir: Path) -> Iterator[Daemon]:
    d = Daemon(private_dir, "--latency-histogram")
    yield d
    if d.process.proc.poll() is None:
        d.process.stop(signal.SIGKILL)


@pytest.fixture
def frontend(daemon: Daemon) -> Iterator[VhostUserFrontend]:
    fe = VhostUserFrontend(str(daemon.process.socket_path))
    fe.start()
    yield fe
    if fe.sock.fileno() != -1:
        fe.close()


def _ok(frontend: VhostUserFrontend, request: bytes) -> bytes:
    reply = fr.parse_reply(frontend.request(request))
    assert reply.error == 0, reply
    return reply.payload


def test_status_shows_what_the_front_end_did(daemon: Daemon, frontend: VhostUserFrontend) -> None:
    (daemon.share / "docs").mkdir()
    (daemon.share / "docs" / "a.txt").write_text("hello")
    (daemon.share / "secret").write_text("no")
    daemon.allow("/docs")
    _ok(frontend, fr.init_request(1))
    docs = fr.parse_entry(_ok(frontend, fr.lookup(2, ROOT, "docs"))).nodeid
    a = fr.parse_entry(_ok(frontend, fr.lookup(3, docs, "a.txt"))).nodeid
    fh = fr.parse_open(_ok(frontend, fr.open_(4, a)))[0]
    dir_fh = fr.parse_open(_ok(frontend, fr.opendir(5, docs)))[0]
    assert fr.parse_reply(frontend.request(fr.lookup(6, ROOT, "secret"))).error != 0
    for unique in range(7, 10):
        _ok(frontend, fr.getattr(unique, a))

    doc = daemon.document()
    assert doc["transport"] == "vhost-user"
    assert doc["socket"] == str(daemon.process.socket_path)
    assert doc["shared_dir"] == str(daemon.share)
    assert doc["frontend"]["pid"] == os.getpid()  # the front-end is this test process
    assert (doc["frontend"]["uid"], doc["frontend"]["gid"]) == (os.getuid(), os.getgid())
    assert doc["uptime_seconds"] > 0 and doc["frontend"]["connected_seconds"] > 0
    assert doc["requests"]["by_opcode"] == {
        "INIT": {"requests": 1, "errors": 0},
        "LOOKUP": {"requests": 3, "errors": 1},
        "OPEN": {"requests": 1, "errors": 0},
        "OPENDIR": {"requests": 1, "errors": 0},
        "GETATTR": {"requests": 3, "errors": 0},
    }
    assert (doc["requests"]["total"], doc["requests"]["errors"]) == (9, 1)
    assert doc["open"] == {"inodes": 3, "handles": 2}  # root, docs, a.txt; a.txt and docs
    assert doc["allowlist"] == {"paths": ["/docs"]}
    assert doc["plugins"] == []
    vhost = doc["vhost_user"]
    assert {"VERSION_1", "PROTOCOL_FEATURES", "RING_EVENT_IDX"} <= set(vhost["features"])
    assert {"MQ", "REPLY_ACK"} <= set(vhost["protocol_features"])
    assert vhost["memory_regions"] == 1 and vhost["memory_bytes"] == frontend.memory_size
    assert [(q["index"], q["running"], q["requests"]) for q in vhost["queues"]] == [
        (0, True, 0),
        (1, True, 9),
    ]
    assert vhost["queues"][1]["interrupts"] > 0
    assert doc["fuse"]["initialized"] and doc["fuse"]["major"] == 7
    assert "POSIX_LOCKS" in doc["fuse"]["flags"]
    counted = {op: row["count"] for op, row in doc["latency"]["by_opcode"].items()}
    assert counted == {op: v["requests"] for op, v in doc["requests"]["by_opcode"].items()}

    # Closing and forgetting shows at once.
    _ok(frontend, fr.release(10, a, fh))
    _ok(frontend, fr.releasedir(11, docs, dir_fh))
    frontend.request(fr.forget(12, a, 1))
    later = daemon.document()
    assert later["open"] == {"inodes": 2, "handles": 0}


def test_human_output(daemon: Daemon, frontend: VhostUserFrontend) -> None:
    daemon.allow("/x", "/y/z")
    _ok(frontend, fr.init_request(1))
    _ok(frontend, fr.getattr(2, ROOT))
    out = daemon.status().stdout
    # Its command name too where /proc shows it (not inside the namespace sandbox).
    assert re.search(rf"front-end: pid {os.getpid()}[ ,]", out), out
    assert f"serving {daemon.share} over vhost-user on {daemon.process.socket_path}" in out
    assert "allowlist: /x /y/z" in out
    assert "plugins: none" in out
    assert "virtio features: " in out and "VERSION_1" in out
    assert "requests: 2 served, 0 answered with an error, 0 malformed" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert rows["GETATTR"][:2] == ["1", "0"]
    assert rows["1"][:2] == ["running", "2"]  # queue 1: two requests


def test_prometheus_output_parses(daemon: Daemon, frontend: VhostUserFrontend) -> None:
    _ok(frontend, fr.init_request(1))
    for unique in range(2, 7):
        _ok(frontend, fr.getattr(unique, ROOT))
    samples = parse_exposition(daemon.status("--prometheus").stdout)
    assert sample_value(samples, "fsd_requests_total", opcode="GETATTR") == 5
    assert sample_value(samples, "fsd_request_errors_total", opcode="GETATTR") == 0
    assert sample_value(samples, "fsd_queue_requests_total", queue="1") == 6
    assert sample_value(samples, "fsd_frontend_info", pid=str(os.getpid())) == 1
    assert sample_value(samples, "fsd_request_duration_seconds_count", opcode="GETATTR") == 5
    assert sample_value(samples, "fsd_open_handles") == 0
    assert sample_value(samples, "fsd_allowlist_enabled") == 1
    # The same over raw HTTP, as a scraper (or curl --unix-socket) asks for it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.status_socket))
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    parse_exposition(body.decode())


def test_the_socket_is_its_owners_only(private_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to try the socket as another user")
    python = "/usr/bin/python3"  # the system's: another user may not enter this venv's home
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python} to run a probe as another user")
    private_dir.chmod(0o755)  # so that only the socket's own mode stands in the way
    daemon = Daemon(private_dir)
    try:
        info = daemon.status_socket.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        probe = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "try:\n    s.connect(sys.argv[1])\n"
            "except PermissionError:\n    sys.exit(13)\n"
            "sys.exit(0)\n"
        )
        other = subprocess.run(
            [python, "-c", probe, str(daemon.status_socket)],
            user=65534, group=65534, extra_groups=[], timeout=30, check=False,
        )  # fmt: skip
        assert other.returncode == 13, "another user could connect to the status socket"
        # The owner still can.
        assert daemon.status().returncode == 0
    finally:
        daemon.process.stop()


def test_asking_does_not_disturb_requests_in_flight(
    daemon: Daemon, frontend: VhostUserFrontend
) -> None:
    (daemon.share / "f").write_text("x")
    daemon.allow("/f")
    _ok(frontend, fr.init_request(1))
    f = fr.parse_entry(_ok(frontend, fr.lookup(2, ROOT, "f"))).nodeid
    count = 400
    failures: list[str] = []
    done = threading.Event()

    def send() -> None:
        try:
            for unique in range(10, 10 + 2 * count, 2):
                reply = fr.parse_reply(frontend.request(fr.getattr(unique, f)))
                if reply.error or reply.unique != unique:
                    failures.append(f"unique {unique}: {reply}")
        except Exception as exc:  # reported by the assertion below
            failures.append(repr(exc))
        finally:
            done.set()

    sender = threading.Thread(target=send)
    sender.start()
    asked = 0
    while not done.is_set() or asked < 3:
        for path in ("/status", "/metrics", "/"):
            fetch(daemon.status_socket, path)
        asked += 1
    sender.join(timeout=60)
    assert not failures, failures[:5]
    assert asked >= 3
    doc = daemon.document()
    assert doc["requests"]["by_opcode"]["GETATTR"] == {"requests": count, "errors": 0}
    assert doc["vhost_user"]["queues"][1]["requests"] == count + 2


def test_idle_and_bad_clients_do_not_block_the_socket(daemon: Daemon) -> None:
    with contextlib.ExitStack() as idle:
        for _ in range(3):  # connected, never asking anything
            sock = idle.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.connect(str(daemon.status_socket))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
            bad.settimeout(10)
            bad.connect(str(daemon.status_socket))
            bad.sendall(b"\x00\x01 not http\r\n\r\n")
            assert bad.recv(4096).startswith(b"HTTP/1.1 400 ")
        started = time.monotonic()
        assert daemon.status("--json").returncode == 0
        assert time.monotonic() - started < 5  # not behind the idle ones' 5 s timeout


def test_status_socket_errors_are_one_line(daemon: Daemon, private_dir: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "fsd", "status", "--socket", str(private_dir / "nope.sock")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "no such socket" in missing.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "fsd", "status", "--socket", str(daemon.control)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "not a status socket" in wrong.stderr and wrong.stderr.count("\n") == 1


def test_latency_histogram_alone_is_a_usage_error(private_dir: Path) -> None:
    share = private_dir / "share"
    share.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "fsd", "serve", "--socket-path", str(private_dir / "v.sock"),
         "--shared-dir", str(share), "--latency-histogram"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--latency-histogram needs --status-socket" in result.stderr


def test_without_options_there_is_no_status_socket_and_no_allowlist(private_dir: Path) -> None:
    share = private_dir / "share"
    share.mkdir()
    serve = ServeProcess(share, private_dir / "v.sock")
    try:
        assert sorted(p.name for p in private_dir.iterdir()) == ["share", "v.sock"]
    finally:
        serve.stop()
    (private_dir / "again").mkdir()
    daemon = Daemon(private_dir / "again")
    try:
        assert daemon.document()["latency"] is None  # not asked for: no histograms
    finally:
        daemon.process.stop()


def test_plugins_and_queue_restarts_show(private_dir: Path) -> None:
    """A loaded plugin (with FUSE hooks: the timing wrapper goes around them) is listed, and
    a queue's counts survive its stop (a VM pause or reboot stops and restarts queues)."""
    (private_dir / "log").mkdir()  # beside the share: kept writable in the sandbox
    audit = private_dir / "log" / "audit.jsonl"
    daemon = Daemon(
        private_dir,
        "--latency-histogram",
        "--plugin",
        "audit-log",
        "--plugin-cfg",
        f"audit-log:path={audit},classes=all",
    )
    frontend = VhostUserFrontend(str(daemon.process.socket_path))
    try:
        frontend.start()
        _ok(frontend, fr.init_request(1))
        _ok(frontend, fr.getattr(2, ROOT))
        frontend.stop()  # disables the rings and fetches their bases, as QEMU at pause
        doc = daemon.document()
        assert doc["plugins"] == ["audit-log"]
        assert [(q["running"], q["requests"]) for q in doc["vhost_user"]["queues"]] == [
            (False, 0),
            (False, 2),
        ]
        assert doc["latency"]["by_opcode"]["GETATTR"]["count"] == 1
        assert '"op":"GETATTR"' in audit.read_text()  # the plugin saw it too
    finally:
        frontend.close()
        daemon.process.stop()
