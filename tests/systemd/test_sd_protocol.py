"""fsd.daemon.systemd: the sd_notify datagrams as a listener receives them (path and abstract
addresses), and the $LISTEN_* variables of socket activation, parsed and applied to real
sockets and to a real child process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.daemon import systemd
from fsd.daemon.systemd import ListenFd, SocketActivationError, parse_listen_env
from fsd.testing.guest import fsd_env
from tests.systemd.activation import activated, high_fd
from tests.systemd.notify_listener import NotifyListener


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    if request.param == "path":
        address = str(tmp_path / "notify")
    else:
        address = f"@fsd-test-notify-{uuid.uuid4().hex}"
    notify = NotifyListener(address)
    yield notify
    notify.close()


def test_address_forms() -> None:
    assert systemd.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert systemd.notify_address("@abc/def") == b"\0abc/def"
    assert systemd.notify_address("@") is None
    assert systemd.notify_address("relative/path") is None
    assert systemd.notify_address("vsock:2:1234") is None


def test_ready_status_stopping_arrive_from_this_process(listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": listener.address}
    assert systemd.notify("READY=1", "STATUS=up", environ=env)
    note = listener.receive()
    assert note is not None
    assert note.text == "READY=1\nSTATUS=up"
    assert note.pid == os.getpid()
    assert systemd.notify("STOPPING=1", environ=env)
    assert listener.wait_for("STOPPING").fields == {"STOPPING": "1"}


def test_helpers_use_the_environment(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    assert systemd.notify_ready("listening on /run/x.sock")
    assert listener.wait_for("READY").fields == {
        "READY": "1",
        "STATUS": "listening on /run/x.sock",
    }
    assert systemd.notify_status("serving")
    assert listener.wait_for("STATUS").fields == {"STATUS": "serving"}
    assert systemd.notify_reloading()
    reloading = listener.wait_for("RELOADING")
    assert int(reloading.fields["MONOTONIC_USEC"]) > 0
    assert systemd.notify_stopping("signal SIGTERM")
    assert listener.wait_for("STOPPING").fields["STATUS"] == "signal SIGTERM"


def test_a_newline_in_a_status_cannot_add_an_assignment(listener: NotifyListener) -> None:
    """A STATUS built from a file name must not be able to say MAINPID= or READY=1."""
    env = {"NOTIFY_SOCKET": listener.address}
    systemd.notify("STATUS=serving /srv/evil\nMAINPID=1\nREADY=1", environ=env)
    note = listener.receive()
    assert note is not None
    assert note.fields == {"STATUS": "serving /srv/evil MAINPID=1 READY=1"}


def test_no_notify_socket_is_a_no_op() -> None:
    assert not systemd.notify("READY=1", environ={})
    assert not systemd.notify("READY=1", environ={"NOTIFY_SOCKET": ""})


def test_an_unreachable_manager_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for address in (str(tmp_path / "nobody"), "vsock:2:99", "@"):
        assert not systemd.notify("READY=1", environ={"NOTIFY_SOCKET": address})
    assert "cannot notify the service manager" in caplog.text


# -- $LISTEN_* --------------------------------------------------------------------------------


def test_listen_env_for_this_process() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "vhost:ctl"}
    assert parse_listen_env(env, 42) == [ListenFd(3, "vhost"), ListenFd(4, "ctl")]
    assert parse_listen_env({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42) == [ListenFd(3, "unknown")]
    assert parse_listen_env({"LISTEN_PID": "42", "LISTEN_FDS": "0"}, 42) == []


def test_listen_env_for_another_process_or_none() -> None:
    """A child that inherited its parent's environment must not take the parent's sockets."""
    assert parse_listen_env({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, 42) == []
    assert parse_listen_env({"LISTEN_FDS": "1"}, 42) == []
    assert parse_listen_env({}, 42) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LISTEN_PID": "x"}, "is not a process id"),
        ({"LISTEN_PID": "42"}, "is not a number"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "two"}, "is not a number"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "out of range"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}, "names 1 sockets"),
    ],
)
def test_malformed_listen_env(env: dict[str, str], message: str) -> None:
    with pytest.raises(SocketActivationError, match=message):
        parse_listen_env(env, 42)


def _listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def test_adopt_picks_the_listener_bound_at_the_path(tmp_path: Path) -> None:
    other = _listening(tmp_path / "other.sock")
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    datagram.bind(str(tmp_path / "vhost.sock.dgram"))
    wanted = _listening(tmp_path / "vhost.sock")
    fds = [
        ListenFd(s.fileno(), name) for s, name in [(other, "a"), (unbound, "b"), (datagram, "c")]
    ]
    wanted_fd = ListenFd(os.dup(wanted.fileno()), "vhost")
    adopted = systemd.adopt_unix_listener(str(tmp_path / "vhost.sock"), [*fds, wanted_fd])
    assert adopted is not None
    with adopted:
        assert adopted.getsockname() == str(tmp_path / "vhost.sock")
        with pytest.raises(OSError, match="Bad file descriptor"):  # the inherited fd: closed
            os.fstat(wanted_fd.fd)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(tmp_path / "vhost.sock"))
        conn, _ = adopted.accept()
        conn.close()
        client.close()
    for sock in (other, unbound, datagram, wanted):  # the others were left open
        os.fstat(sock.fileno())
        sock.close()


def test_adopt_finds_nothing_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = _listening(tmp_path / "other.sock")
    with other:
        found = systemd.adopt_unix_listener(
            str(tmp_path / "vhost.sock"), [ListenFd(other.fileno(), "other")]
        )
        assert found is None
    assert "none of them a listening Unix socket at" in caplog.text
    assert systemd.adopt_unix_listener(str(tmp_path / "vhost.sock"), []) is None


CHILD = """
import fcntl, json, os
from fsd.daemon import systemd
fds = systemd.listen_fds()
print(json.dumps({
    "fds": [[f.fd, f.name] for f in fds],
    "cloexec": [bool(fcntl.fcntl(f.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for f in fds],
    "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}))
"""


def test_listen_fds_in_a_child_marks_them_cloexec_and_unsets_the_variables(
    tmp_path: Path,
) -> None:
    a, b = _listening(tmp_path / "a.sock"), _listening(tmp_path / "b.sock")
    fds = [high_fd(a), high_fd(b)]
    env = {**fsd_env(), "LISTEN_FDNAMES": "a:b"}
    argv = activated([sys.executable, "-c", CHILD], fds, env)
    result = subprocess.run(
        argv, env=env, pass_fds=fds, capture_output=True, text=True, timeout=60, check=True
    )
    for fd in fds:
        os.close(fd)
    a.close()
    b.close()
    assert json.loads(result.stdout) == {
        "fds": [[3, "a"], [4, "b"]],
        "cloexec": [True, True],
        "env": [],
    }
