"""``python -m fsd.testing.run_guest``: run a shell command in a throwaway guest against a
vhost-user-fs back-end, from the command line.

The guest is the project's test bed (see :mod:`fsd.testing.guest`): QEMU boots the Debian
cloud kernel and busybox initramfs, mounts ``-t virtiofs TAG`` from the back-end listening on
``--socket-path``, runs WORKLOAD with the mount as its working directory, and powers off. The
workload's output is printed and its exit status becomes this command's; a guest that fails
to boot or mount, or runs out of time, prints QEMU's console and exits 1. It is what the
project's own guest tests do, for people trying fsd without a VM image of their own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

import trio

from fsd.testing.guest import BUILD_SCRIPT, GuestError, GuestImage, build_testbed, run_guest

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fsd.testing.run_guest",
        description="Boot the test guest against a vhost-user-fs back-end, run WORKLOAD (a "
        "busybox sh script) in the virtio-fs mount and print its output.",
    )
    p.add_argument("--socket-path", required=True, help="the back-end's vhost-user socket")
    p.add_argument("--tag", default="myfs", help="the virtio-fs tag to give and mount (myfs)")
    p.add_argument(
        "--time-limit", type=float, default=120.0, help="seconds before QEMU is killed (120)"
    )
    p.add_argument(
        "--build",
        action="store_true",
        help="first build the test guest if it is missing or stale (as root, Debian 12: it "
        "installs QEMU and busybox and downloads Debian's cloud kernel)",
    )
    p.add_argument("workload", metavar="WORKLOAD", help="shell commands run in the mount")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.build:
        try:
            build_testbed()
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"run_guest: building the test guest failed: {exc}", file=sys.stderr)
            return 2
    image = GuestImage.default()
    if not image.exists():
        print(
            f"run_guest: no test guest at {image.kernel.parent}: add --build (as root, on "
            f"Debian 12), which runs {BUILD_SCRIPT}",
            file=sys.stderr,
        )
        return 2
    try:
        result = trio.run(
            lambda: run_guest(
                args.workload,
                socket_path=args.socket_path,
                tag=args.tag,
                time_limit=args.time_limit,
                guest_image=image,
            )
        )
    except GuestError as exc:
        print(f"run_guest: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.output)
    if result.exit_status is None:
        print(f"run_guest: {result.describe()}", file=sys.stderr)
        return 1
    return result.exit_status


if __name__ == "__main__":
    raise SystemExit(main())
