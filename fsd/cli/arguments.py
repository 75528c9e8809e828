"""The command-line options ``fsd serve`` and ``fsd mount`` share: what the filesystem does,
who may see what, and which plugins watch it. One definition, so both commands agree."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import attrs

from fsd.fs.idmap import parse_id_maps
from fsd.fs.options import FsOptions, parse_cfg
from fsd.status import StatusConfig

__all__ = [
    "add_filesystem_arguments",
    "add_plugin_arguments",
    "add_status_arguments",
    "filesystem_options",
    "status_config",
]


def add_filesystem_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cfg`` (repeatable), ``--allowlist-socket-path``, ``--uid-map``/``--gid-map`` and
    the plugin options."""
    parser.add_argument(
        "--cfg",
        action="append",
        default=[],
        metavar="K=V[,K=V...]",
        help="filesystem options as crosvm's key=value,...: cache=never|auto|always, "
        "timeout=SECONDS, negative_timeout=SECONDS, writeback=BOOL, rewrite_security_xattrs="
        "BOOL (see docs/filesystem.md); repeatable",
    )
    parser.add_argument(
        "--allowlist-socket-path",
        metavar="CTRL",
        help="SOCK_SEQPACKET control socket for the dynamic path allowlist: the guest sees "
        "nothing until paths are added (--cfg timeout=0 makes removals take effect at once)",
    )
    for kind in ("uid", "gid"):
        parser.add_argument(
            f"--{kind}-map",
            metavar=f"{kind.upper()}MAP",
            help=f"translate guest {kind}s to host {kind}s: crosvm's 'inner outer count[,...]' "
            f"(inner = guest, outer = host); unmapped host {kind}s show as 65534 "
            "(default: none, ids pass unchanged; see docs/credentials.md)",
        )
    add_plugin_arguments(parser)
    add_status_arguments(parser)


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--plugin`` and ``--plugin-cfg`` (both repeatable) to a command's parser."""
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="load this plugin: an entry point of group 'fsd' or a module:object path",
    )
    parser.add_argument(
        "--plugin-cfg",
        action="append",
        default=[],
        metavar="NAME:K=V[,K=V...]",
        help="options for a loaded plugin (see `fsd plugins --plugin NAME`)",
    )


def filesystem_options(args: argparse.Namespace, extra_cfg: Sequence[str] = ()) -> FsOptions:
    """The ``FsOptions`` the parsed arguments ask for (``extra_cfg``: more ``key=value`` text,
    e.g. from crosvm's ``--shared-dir`` form). Raises ValueError naming what is wrong."""
    text = ",".join(part for part in [*extra_cfg, *args.cfg] if part.strip(", "))
    options = parse_cfg(text)
    id_maps = parse_id_maps(args.uid_map, args.gid_map)
    return attrs.evolve(options, id_maps=id_maps) if id_maps is not None else options


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """``--status-socket`` and ``--latency-histogram`` (the status view, docs/status.md)."""
    parser.add_argument(
        "--status-socket",
        metavar="PATH",
        help="serve a read-only status view on this Unix socket (mode 0600; HTTP: /status "
        "JSON, /metrics Prometheus, / text), read with `fsd status --socket PATH`",
    )
    parser.add_argument(
        "--latency-histogram",
        action="store_true",
        help="also time every request into per-opcode latency histograms for the status view "
        "(about 5,000 CPU instructions more per request; off by default)",
    )


def status_config(args: argparse.Namespace) -> StatusConfig:
    """The ``StatusConfig`` the parsed arguments ask for; ValueError naming what is wrong."""
    return StatusConfig(args.status_socket, args.latency_histogram)
