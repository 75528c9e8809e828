"""``fsd allowlist`` as users run it: a subprocess against the real control socket."""

import sys
from pathlib import Path

import trio

from fsd.allowlist.trie import FULL, Allowlist


async def cli(*args: str, module: str = "fsd allowlist") -> tuple[int, str, str]:
    result = await trio.run_process(
        [sys.executable, "-m", *module.split(), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_add_list_remove(control_socket: str, allowlist: Allowlist) -> None:
    assert await cli("--socket", control_socket, "add", "/a/b", "/c") == (0, '"Ok"\n', "")
    assert allowlist.access(("a", "b")) is FULL
    assert await cli("--socket", control_socket, "list") == (0, '{"Paths":["/a/b","/c"]}\n', "")
    assert await cli("--socket", control_socket, "remove", "/c") == (0, '"Ok"\n', "")
    assert allowlist.explicit_paths() == [("a", "b")]


async def test_refusal_prints_err_and_exits_1(control_socket: str) -> None:
    code, out, _ = await cli("--socket", control_socket, "remove", "/never")
    assert code == 1
    assert out == '{"Err":"Failed to remove one or more paths: /never is not an added path"}\n'
    code, out, _ = await cli("--socket", control_socket, "add", "/../x")
    assert code == 1
    assert "climbs above the share root" in out


async def test_unreachable_socket_exits_1(socket_dir: Path) -> None:
    code, out, err = await cli("--socket", str(socket_dir / "missing.sock"), "list")
    assert (code, out) == (1, "")
    assert "missing.sock: No such file or directory" in err


async def test_usage_errors_exit_2(control_socket: str) -> None:
    code, _, err = await cli("--socket", control_socket, "add")
    assert code == 2
    assert "usage: fsd allowlist" in err
    code, _, _ = await cli("add", "/a")
    assert code == 2
    code, _, _ = await cli("--socket", control_socket, "frob", "/a")
    assert code == 2
