"""``fsd serve`` inside the sandbox, wired as the command line will do it (until it does).

    python -m tests.sandbox.serve_sandboxed --socket-path S --shared-dir D
        [--sandbox namespace|chroot|none] [--seccomp kill|log|trap|none] [--modcaps M]
        [--log-level L]

The order is the one :func:`fsd.sandbox.enter_sandbox` documents: process set-up (umask,
supplementary groups, open-files limit), the vhost-user socket bound and listening, then the
sandbox, then ``trio.run`` with the socket handed over as an inherited fd. In namespace mode
the supervisor removes the socket file after the server exits. FSD_GUEST_BACKEND=fsd-sandbox
runs the guest tests against this.
"""

from __future__ import annotations

import argparse
import functools
import logging
import socket
import sys

import trio

from fsd.cli.process import prepare_process
from fsd.daemon.serve import ServeConfig, serve
from fsd.sandbox import SandboxConfig, SandboxError, SandboxMode, SeccompAction, enter_sandbox
from fsd.unix_sockets import bind_private, unlink_if_ours


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="serve_sandboxed")
    parser.add_argument("--socket-path", required=True)
    parser.add_argument("--shared-dir", required=True)
    parser.add_argument("--sandbox", default="namespace", choices=[m.value for m in SandboxMode])
    parser.add_argument("--seccomp", default="kill", choices=[a.value for a in SeccompAction])
    parser.add_argument("--modcaps")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.sandbox == "chroot":
        # fsd's filesystem reopens inodes through the path /proc/self/fd/N, which a chroot
        # into the shared directory does not have (it needs Sandbox.proc_self_fd instead).
        parser.error("--sandbox chroot is not supported by fsd's filesystem yet")
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="fsd[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Process set-up first: raising a limit or dropping groups needs privileges the sandbox
    # takes away.
    prepare_process()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    identity = bind_private(listener, args.socket_path)
    listener.listen(1)
    try:
        sandbox = enter_sandbox(
            SandboxConfig(
                args.shared_dir,
                SandboxMode(args.sandbox),
                SeccompAction(args.seccomp),
                modcaps=args.modcaps,
            ),
            cleanup=functools.partial(unlink_if_ours, args.socket_path, identity),
        )
    except SandboxError as exc:
        logging.getLogger("fsd").error("%s", exc)
        return 1
    config = ServeConfig(shared_dir=sandbox.shared_dir, listen_fd=listener.detach())
    try:
        trio.run(functools.partial(serve, config))
    finally:
        if not sandbox.pid_namespace:
            unlink_if_ours(args.socket_path, identity)  # none mode: the path is still ours
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
