"""The ``fsd`` command line: argument checking and crosvm's ``--shared-dir`` form."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fsd.cli.shared_dir import SharedDirSpec, parse_shared_dir
from fsd.cli.version import fsd_version


def fsd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsd", *args], capture_output=True, text=True, timeout=60
    )


def test_plain_directory(tmp_path: Path) -> None:
    assert parse_shared_dir(str(tmp_path)) == SharedDirSpec(str(tmp_path), None, "")


def test_crosvm_form(tmp_path: Path) -> None:
    spec = parse_shared_dir(f"{tmp_path}:myfs:type=fs:cache=always:timeout=0")
    assert spec == SharedDirSpec(str(tmp_path), "myfs", "cache=always,timeout=0")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/x:tag:type=p9", "only type=fs"),
        ("/x:tag:uidmap=0 0 1", "not supported"),
        ("/x:tag:cache", "not key=value"),
        (":tag", "source directory is empty"),
    ],
)
def test_crosvm_form_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_shared_dir(value)


def test_usage_lists_commands() -> None:
    result = fsd("--help")
    assert result.returncode == 0
    for command in ("serve", "mount", "allowlist"):
        assert command in result.stdout


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["serve", "--version"], ["serve", "-V"]])
def test_version_is_the_installed_distributions(args: list[str]) -> None:
    result = fsd(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fsd {importlib.metadata.version('fsd')}\n"


def test_version_in_a_checkout_that_was_never_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    declared = pyproject["project"]["version"]
    assert fsd_version() == f"{declared}+checkout"


def test_unknown_command() -> None:
    result = fsd("frobnicate")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shared-dir", "/nonexistent-fsd-dir"], "no such directory"),
        (["--shared-dir", "{tmp}", "--cfg", "bogus=1"], "bogus"),
        (["--shared-dir", "{tmp}:t:type=fs:cache=sometimes"], "cache"),
        (["--shared-dir", "{tmp}", "--tag", "x" * 37], "tag"),
    ],
)
def test_serve_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    result = fsd("serve", "--socket-path", str(tmp_path / "s.sock"), *argv)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("command", [["serve"], ["serve", "--socket-path", "x"]])
def test_print_capabilities_follows_the_vhost_user_convention(command: list[str]) -> None:
    """Only what fsd has: virtiofsd's separate options, no migration."""
    result = fsd(*command, "--print-capabilities")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"type": "fs", "features": ["separate-options"]}


def test_fsd_vhost_user_prints_the_same_capabilities() -> None:
    binary = Path(sys.executable).with_name("fsd-vhost-user")
    if not binary.exists():
        pytest.skip("fsd-vhost-user is not installed next to this Python")
    result = subprocess.run([binary, "--print-capabilities"], capture_output=True, text=True)
    assert json.loads(result.stdout) == {"type": "fs", "features": ["separate-options"]}


def test_vhost_user_json_sorts_after_the_systems_virtiofsd() -> None:
    """libvirt takes the first "fs" description in file-name order: fsd's must not win over
    the distribution's 50-qemu-virtiofsd.json unless the user puts it first on purpose."""
    folder = Path(__file__).parents[2] / "contrib/vhost-user"
    (path,) = folder.glob("*.json")
    assert path.name > "50-qemu-virtiofsd.json" and path.name > "50-virtiofsd.json"
    description = json.loads(path.read_text())
    assert description["type"] == "fs"
    assert description["binary"].endswith("fsd-vhost-user")
    assert set(description) == {"description", "type", "binary"}


@pytest.mark.parametrize("fd", ["-1", "99", "nope"])
def test_serve_refuses_an_fd_that_is_no_socket(tmp_path: Path, fd: str) -> None:
    result = fsd("serve", "--fd", fd, "--shared-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--fd" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_an_unusable_allowlist_socket_without_a_traceback(tmp_path: Path) -> None:
    result = fsd(
        "serve", "--socket-path", str(tmp_path / "s.sock"), "--shared-dir", str(tmp_path),
        "--allowlist-socket-path", str(tmp_path / "missing-dir" / "ctl.sock"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path}/missing-dir does not exist" in result.stderr
