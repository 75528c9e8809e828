"""The control socket over real SOCK_SEQPACKET sockets: sessions, errors, lifecycle."""

import array
import errno
import json
import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from fsd.allowlist.client import AllowlistClient, AllowlistError, AsyncAllowlistClient
from fsd.allowlist.handler import AllowlistChange
from fsd.allowlist.server import serve_allowlist
from fsd.allowlist.trie import FULL, TRAVERSE, Allowlist

SO_SNDBUFFORCE = 32  # Linux; the socket module names it only from Python 3.12


async def connect(path: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    await sock.connect(path)
    return sock


async def ask(sock: trio.socket.SocketType, packet: bytes) -> bytes:
    await sock.send(packet)
    return await sock.recv(1 << 16)


async def test_socket_is_private_seqpacket(control_socket: str) -> None:
    info = os.stat(control_socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        with pytest.raises(OSError, match="wrong type") as refused:
            stream.connect(control_socket)
        assert refused.value.errno == errno.EPROTOTYPE


async def test_add_list_remove(control_socket: str, allowlist: Allowlist) -> None:
    async with AsyncAllowlistClient(control_socket) as client:
        await client.add(["/a/b", "/c"])
        assert allowlist.access(("a",)) is TRAVERSE
        assert allowlist.access(("a", "b", "x")) is FULL
        assert await client.list() == ["/a/b", "/c"]
        await client.remove(["/c"])
        assert await client.list() == ["/a/b"]
        with pytest.raises(AllowlistError, match="/c is not an added path"):
            await client.remove(["/c"])
        await client.add([])  # empty batch: Ok


async def test_wire_bytes_are_crosvm_compatible(control_socket: str) -> None:
    with await connect(control_socket) as sock:
        assert await ask(sock, b'{"AddPaths":{"paths":["/allowed"]}}') == b'"Ok"'
        assert await ask(sock, b'{"RemovePaths":{"paths":["/non_existent"]}}') == (
            b'{"Err":"Failed to remove one or more paths: /non_existent is not an added path"}'
        )
        assert await ask(sock, b'"ListPaths"') == b'{"Paths":["/allowed"]}'


async def test_bad_packets_get_err_and_the_session_goes_on(
    control_socket: str, allowlist: Allowlist
) -> None:
    with await connect(control_socket) as sock:
        for junk in [b"junk", b"\xff", b'{"AddPaths":{"paths":[1]}}', b'{"Nope":{}}', b"[" * 5000]:
            answer = await ask(sock, junk)
            assert answer.startswith(b'{"Err":"invalid request: '), answer
        assert await ask(sock, b'{"AddPaths":{"paths":["/still/alive"]}}') == b'"Ok"'
    assert allowlist.explicit_paths() == [("still", "alive")]


async def test_oversized_packet_is_refused(socket_dir: Path, nursery: trio.Nursery) -> None:
    allowlist = Allowlist()
    path = await nursery.start(
        lambda task_status: serve_allowlist(
            socket_dir / "small.sock", allowlist, max_packet=64, task_status=task_status
        )
    )
    with await connect(path) as sock:
        big = b'{"AddPaths":{"paths":["/' + b"x" * 100 + b'"]}}'
        assert await ask(sock, big) == b'{"Err":"invalid request: packet larger than 64 bytes"}'
        assert await ask(sock, b'{"AddPaths":{"paths":["/y"]}}') == b'"Ok"'
    assert allowlist.explicit_paths() == [("y",)]


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_SNDBUFFORCE needs CAP_NET_ADMIN")
async def test_one_mebibyte_limit(control_socket: str) -> None:
    """The default limit is 1 MiB; the client raises its send buffer to get a bigger packet."""
    with await connect(control_socket) as sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20)
        body = b'{"AddPaths":{"paths":["/%s"]}}'
        exact = body % (b"x" * ((1 << 20) - len(body) + 2))
        assert len(exact) == 1 << 20
        assert await ask(sock, exact) == b'"Ok"'
        over = body % (b"x" * ((1 << 20) - len(body) + 3))
        assert await ask(sock, over) == (
            b'{"Err":"invalid request: packet larger than 1048576 bytes"}'
        )


async def test_many_clients_at_once(control_socket: str, allowlist: Allowlist) -> None:
    """crosvm serves one client at a time; fsd serves all connected clients concurrently."""
    connected = 0
    everyone_in = trio.Event()

    async def client(n: int) -> None:
        nonlocal connected
        async with AsyncAllowlistClient(control_socket) as c:
            await c.list()  # connected and served
            connected += 1
            if connected == 20:
                everyone_in.set()
            await everyone_in.wait()
            for i in range(5):
                await c.add([f"/client{n}/{i}"])
            await c.remove([f"/client{n}/0"])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(client, n)
    assert len(allowlist.explicit_paths()) == 20 * 4
    assert allowlist.access(("client7", "0")) is not FULL
    assert allowlist.access(("client7", "4")) is FULL


async def test_a_hung_client_does_not_block_others(control_socket: str) -> None:
    """A client that asks and never reads fills its socket; the server's task for it blocks
    in send, and every other client is still answered."""
    paths = [f"/{i:04d}-" + "x" * 200 for i in range(300)]
    async with AsyncAllowlistClient(control_socket) as setup:
        await setup.add(paths)
    with await connect(control_socket) as idle:
        for _ in range(40):  # ~60 KiB answers nobody reads
            await idle.send(b'"ListPaths"')
        await trio.sleep(0.2)
        async with AsyncAllowlistClient(control_socket) as other:
            with trio.fail_after(5):
                await other.add(["/x"])
                assert len(await other.list()) == 301


async def test_passed_fds_are_ignored(control_socket: str) -> None:
    r, w = os.pipe()
    try:
        with await connect(control_socket) as sock:
            fds = array.array("i", [r, w])
            await sock.sendmsg(
                [b'{"AddPaths":{"paths":["/a"]}}'],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())],
            )
            assert await sock.recv(100) == b'"Ok"'
    finally:
        os.close(r)
        os.close(w)


async def test_empty_packet_ends_the_session_like_crosvm(control_socket: str) -> None:
    with await connect(control_socket) as sock:
        await sock.send(b"")
        assert await sock.recv(100) == b""


async def test_long_list_answer_fits_one_packet(control_socket: str) -> None:
    paths = [f"/some/longer/directory/name/{n:06d}" for n in range(20000)]
    with AllowlistClient(control_socket) as client:
        await trio.to_thread.run_sync(client.add, paths)
        listed = await trio.to_thread.run_sync(client.list)
    assert listed == sorted(paths)


async def test_sync_client_in_a_thread(control_socket: str, allowlist: Allowlist) -> None:
    def work() -> list[str]:
        with AllowlistClient(control_socket, timeout=5) as client:
            client.add(["/t"])
            with pytest.raises(AllowlistError, match="climbs above the share root"):
                client.add(["/t/../.."])
            return client.list()

    assert await trio.to_thread.run_sync(work) == ["/t"]


async def test_policy_hooks_run_in_the_server(socket_dir: Path, nursery: trio.Nursery) -> None:
    seen: list[AllowlistChange] = []

    def check(change: AllowlistChange) -> str | None:
        return "no /secret" if ("secret",) in change.paths else None

    async def serve(task_status: trio.TaskStatus[str]) -> None:
        await serve_allowlist(
            socket_dir / "hooks.sock",
            Allowlist(),
            check=check,
            after=lambda change, response: seen.append(change),
            task_status=task_status,
        )

    path = await nursery.start(serve)
    async with AsyncAllowlistClient(path) as client:
        with pytest.raises(AllowlistError, match=r"^no /secret$"):
            await client.add(["/secret"])
        await client.add(["/public"])
    assert [c.paths for c in seen] == [(("secret",),), (("public",),)]


# --- lifecycle -------------------------------------------------------------------------------


async def test_socket_removed_on_cancel(socket_dir: Path) -> None:
    path = socket_dir / "ctrl.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_allowlist, path, Allowlist())
        assert path.exists()
        async with AsyncAllowlistClient(path) as client:  # a client still connected
            await client.add(["/a"])
            nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_stale_socket_is_replaced(socket_dir: Path) -> None:
    path = socket_dir / "ctrl.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:
        dead.bind(str(path))  # bound, never listening: what a killed server leaves
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_allowlist, path, Allowlist())
        async with AsyncAllowlistClient(path) as client:
            await client.add(["/a"])
        nursery.cancel_scope.cancel()


async def test_live_socket_is_not_stolen(control_socket: str, nursery: trio.Nursery) -> None:
    with pytest.raises(OSError, match="another server is listening") as info:
        await nursery.start(serve_allowlist, control_socket, Allowlist())
    assert info.value.errno == errno.EADDRINUSE
    async with AsyncAllowlistClient(control_socket) as client:  # the first server lives on
        await client.add(["/a"])


async def test_regular_file_is_not_removed(socket_dir: Path, nursery: trio.Nursery) -> None:
    path = socket_dir / "precious"
    path.write_text("data")
    with pytest.raises(FileExistsError, match="not a socket"):
        await nursery.start(serve_allowlist, path, Allowlist())
    assert path.read_text() == "data"


async def test_exit_leaves_a_successors_socket_alone(socket_dir: Path) -> None:
    path = socket_dir / "ctrl.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_allowlist, path, Allowlist())
        path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as successor:
            successor.bind(str(path))
            nursery.cancel_scope.cancel()
    assert path.exists()


async def test_a_very_deep_path_and_many_duplicate_keys_do_not_hurt_the_server(
    control_socket: str,
) -> None:
    """Found by review: ListPaths recursed once per path component (RecursionError took the
    daemon down), and finding a duplicate JSON key was quadratic (minutes of CPU)."""
    deep = "/" + "/".join(["a"] * 5000)
    with await connect(control_socket) as sock, trio.fail_after(10):
        assert await ask(sock, json.dumps({"AddPaths": {"paths": [deep]}}).encode()) == b'"Ok"'
        assert json.loads(await ask(sock, b'"ListPaths"')) == {"Paths": [deep]}
    keys = ",".join(f'"{i}":0' for i in range(12000))  # ~110 KiB, one packet
    with await connect(control_socket) as sock, trio.fail_after(2):
        reply = await ask(sock, ("{" + keys + ',"0":0}').encode())
        assert b"duplicate key" in reply
