"""``fsd allowlist --socket CTRL add|remove|list PATH...``: change a running share's allowlist
over its control socket (fsd's or crosvm's) and print the server's JSON answer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fsd.allowlist.client import DEFAULT_TIMEOUT, AllowlistClient, AllowlistError, check_response
from fsd.allowlist.protocol import AddPaths, ListPaths, RemovePaths, Request, encode_request

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsd allowlist",
        description="Change which paths of a running fsd (or crosvm) share the guest may see. "
        "Paths are relative to the shared directory and start with '/'. Prints the "
        "server's JSON answer; exits 0 only if the request was accepted.",
    )
    parser.add_argument("--socket", required=True, metavar="CTRL", help="allowlist socket path")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds (default 10)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser("add", help="allow paths and everything below them")
    add.add_argument("paths", nargs="+", metavar="PATH")
    remove = commands.add_parser("remove", help="revoke previously added paths")
    remove.add_argument("paths", nargs="+", metavar="PATH")
    commands.add_parser("list", help="print the added paths (fsd extension)")
    return parser


def _seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main(argv: Sequence[str]) -> int:
    """Exit 0 when the request was accepted, 1 when refused or unreachable, 2 on a usage
    error; ``argv`` excludes the command."""
    args = _parser().parse_args(list(argv))
    request: Request
    if args.command == "add":
        request = AddPaths(tuple(args.paths))
    elif args.command == "remove":
        request = RemovePaths(tuple(args.paths))
    else:
        request = ListPaths()
    try:
        with AllowlistClient(args.socket, timeout=args.timeout) as client:
            answer = client.request(encode_request(request))
    except OSError as exc:
        print(f"fsd allowlist: {args.socket}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(answer.decode("utf-8", "replace"))
    try:
        check_response(request, answer)
    except AllowlistError:
        return 1
    return 0
