"""``fsd serve --reconnect``, until the command line parses that flag itself.

    python -m tests.daemon.serve_reconnecting --socket-path S --shared-dir D [--cfg K=V,...]
        [--thread-pool-size N] [--log-level L]

As ``fsd serve`` does: process set-up, then :func:`fsd.daemon.serve.serve`, with
``ServeConfig.reconnect`` set.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

import trio

from fsd.cli.process import prepare_process
from fsd.daemon.serve import ServeConfig, serve
from fsd.fs import parse_cfg


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="serve_reconnecting")
    parser.add_argument("--socket-path", required=True)
    parser.add_argument("--shared-dir", required=True)
    parser.add_argument("--cfg", default="")
    parser.add_argument("--thread-pool-size", type=int, default=0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="fsd[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = ServeConfig(
        shared_dir=args.shared_dir,
        socket_path=args.socket_path,
        fs_options=parse_cfg(args.cfg),
        reconnect=True,
        thread_pool_size=args.thread_pool_size,
    )
    prepare_process()
    trio.run(functools.partial(serve, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
