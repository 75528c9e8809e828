"""``fsd status --socket PATH [--json | --prometheus]``: what a running daemon is doing.

Asks the daemon's ``--status-socket`` (docs/status.md) and prints its answer: for a person by
default, the JSON document with ``--json``, the Prometheus exposition with ``--prometheus``
(e.g. for node_exporter's textfile collector).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fsd.status import text
from fsd.status.client import StatusError, fetch, fetch_document

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fsd status",
        description="Show what a running fsd serve or fsd mount is doing, read from its "
        "--status-socket (see docs/status.md).",
    )
    p.add_argument("--socket", required=True, metavar="PATH", help="the daemon's --status-socket")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the JSON status document")
    form.add_argument(
        "--prometheus",
        action="store_true",
        help="print the Prometheus text exposition (what GET /metrics answers)",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="give up after (10)"
    )
    return p


def main(argv: Sequence[str]) -> int:
    """Exit 0 with the status printed, 1 when the daemon cannot be asked (one line saying
    why on stderr), 2 on a usage error."""
    args = _parser().parse_args(list(argv))
    try:
        if args.prometheus:
            sys.stdout.write(fetch(args.socket, "/metrics", args.timeout).decode())
        elif args.json:
            doc = fetch_document(args.socket, args.timeout)
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        else:
            sys.stdout.write(text.render(fetch_document(args.socket, args.timeout)))
    except StatusError as exc:
        sys.stderr.write(f"fsd status: {exc}\n")
        return 1
    return 0
