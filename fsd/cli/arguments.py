"""The command-line options ``fsd serve`` and ``fsd mount`` share: what the filesystem does,
who may see what, which plugins watch it, and where the log goes. One definition, so both
commands agree.

Two vocabularies meet here: crosvm's (``--cfg key=value,...``, ``--uid-map "inner outer
count"``) and virtiofsd 1.13's (``--cache``, ``--readonly``, ``--xattr``...; ``fsd serve``
adds its ``-o`` list). :func:`filesystem_options` merges them: defaults, then ``--cfg``, then
the virtiofsd options, then ``-o`` (as virtiofsd lets ``-o`` override). docs/virtiofsd.md
has the table; a test keeps it equal to ``fsd serve --help``.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Mapping, Sequence
from typing import NoReturn

from fsd.cli.errors import StartupError, report
from fsd.cli.logs import add_logging_arguments
from fsd.cli.virtiofsd import CACHE_TIMEOUTS, REFUSED, CompatOptions
from fsd.daemon.polling import DEFAULT_POLL_MAX_NS
from fsd.fs.file_handles import probe
from fsd.fs.idmap import IdMaps, parse_id_maps, parse_translations
from fsd.fs.options import FsOptions, parse_cfg_values
from fsd.fs.xattrmap import XattrMapError, parse_xattrmap
from fsd.status import StatusConfig
from fsd.unix_sockets import is_listening

__all__ = [
    "OneLineParser",
    "add_filesystem_arguments",
    "add_plugin_arguments",
    "add_status_arguments",
    "check_file_handles",
    "check_socket_path",
    "count",
    "filesystem_options",
    "positive",
    "refuse_unsupported",
    "status_config",
]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``prog: problem (see --help)``)."""

    def error(self, message: str) -> NoReturn:
        report(self.prog, f"{message} (see {self.prog} --help)")
        raise SystemExit(2)


def add_filesystem_arguments(parser: argparse.ArgumentParser, *, default_log_level: str) -> None:
    """The filesystem, id-map, plugin and logging options."""
    parser.add_argument(
        "--cfg",
        action="append",
        default=[],
        metavar="K=V[,K=V...]",
        help="filesystem options as crosvm's key=value,...: cache=never|auto|always|metadata, "
        "timeout=SECONDS, negative_timeout=SECONDS, writeback=BOOL, rewrite_security_xattrs="
        "BOOL, devices=BOOL (see docs/filesystem.md); repeatable",
    )
    parser.add_argument(
        "--allowlist-socket-path",
        metavar="CTRL",
        help="SOCK_SEQPACKET control socket for the dynamic path allowlist: the guest sees "
        "nothing until paths are added (--cfg timeout=0 makes removals take effect at once)",
    )
    parser.add_argument(
        "--cache",
        choices=["auto", "always", "never", "metadata"],
        help="virtiofsd's cache policy, with its cache lifetimes (never 0 s, auto 1 s, "
        "always and metadata 1 day) unless --cfg timeout= says otherwise",
    )
    parser.add_argument(
        "--readonly",
        action="store_true",
        default=None,
        help="refuse every change to the shared directory with EROFS",
    )
    _pair(parser, "xattr", "serve extended attributes", "answer ENOSYS to every xattr request")
    parser.add_argument(
        "--xattrmap",
        metavar="RULES",
        help="virtiofsd's xattr name mapping rules, e.g. ':map::user.virtiofs.:' (implies "
        "--xattr; see docs/virtiofsd.md)",
    )
    _pair(
        parser,
        "killpriv-v2",
        "grant HANDLE_KILLPRIV_V2 (fsd drops set-id bits on write)",
        "leave set-id bits and security.capability to the guest kernel",
    )
    parser.add_argument(
        "--inode-file-handles",
        choices=["never", "prefer", "mandatory", "fallback"],
        help="hold known inodes by file handle instead of an O_PATH fd each (needs root); "
        "prefer falls back to fds where handles fail; fallback is prefer",
    )
    _pair(
        parser,
        "announce-submounts",
        "tell the guest which directories are mount points",
        "do not tell the guest which directories are mount points",
    )
    parser.add_argument(
        "--allow-direct-io",
        action="store_true",
        default=None,
        help="pass the guest's O_DIRECT to host opens instead of dropping it",
    )
    parser.add_argument(
        "--writeback",
        action="store_true",
        default=None,
        help="ask for the guest kernel's writeback cache (same as --cfg writeback=true)",
    )
    parser.add_argument(
        "--allow-mmap",
        action="store_true",
        default=None,
        help="let the guest mmap files opened without its page cache (--cache never, metadata)",
    )
    parser.add_argument(
        "--preserve-noatime",
        action="store_true",
        help="keep the guest's O_NOATIME (fsd always does)",
    )
    parser.add_argument(
        "--posix-acl",
        action="store_true",
        default=None,
        help="POSIX ACLs: the guest enforces them and creates with its umask or a default ACL "
        "(implies --xattr; ACL ids follow --uid-map; not with --translate-*)",
    )
    parser.add_argument(
        "--no-readdirplus",
        dest="readdirplus",
        action="store_false",
        default=None,
        help="do not offer READDIRPLUS: the guest lists with READDIR and looks entries up",
    )
    parser.add_argument(
        "--security-label", action="store_true", help=f"refused: {REFUSED['security_label']}"
    )
    for kind in ("uid", "gid"):
        parser.add_argument(
            f"--{kind}-map",
            action="append",
            default=[],
            metavar=f"{kind.upper()}MAP",
            help=f"translate guest {kind}s to host {kind}s: crosvm's 'inner outer count[,...]' "
            f"or virtiofsd's ':inner:outer:count:' (repeatable; inner = guest, outer = host); "
            f"unmapped host {kind}s show as 65534 (see docs/credentials.md)",
        )
    for kind in ("uid", "gid"):
        parser.add_argument(
            f"--translate-{kind}",
            action="append",
            default=[],
            metavar="TYPE:...",
            help=f"virtiofsd's {kind} translation, repeatable: guest|host|map|squash-guest|"
            f"squash-host:FROM:TO:COUNT or forbid-guest:FROM:COUNT; unmapped ids unchanged",
        )
    parser.add_argument(
        "--rlimit-nofile",
        type=count,
        metavar="N",
        help="set the open-files limit to N (0: leave it; default: raise the soft limit to "
        "the hard one)",
    )
    add_plugin_arguments(parser)
    add_status_arguments(parser)
    add_logging_arguments(parser, default_level=default_log_level)


def _pair(parser: argparse.ArgumentParser, name: str, on: str, off: str) -> None:
    """``--NAME``/``--no-NAME`` into one tri-state destination (None: not given)."""
    dest = name.replace("-", "_")
    parser.add_argument(f"--{name}", dest=dest, action="store_true", default=None, help=on)
    parser.add_argument(f"--no-{name}", dest=dest, action="store_false", help=off)


def count(text: str) -> int:
    """A non-negative decimal number."""
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number")
    return int(text)


def positive(text: str) -> int:
    """A decimal number of at least 1."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def add_polling_argument(parser: argparse.ArgumentParser, *, default: int) -> None:
    """Add ``--poll-max-ns``: how long a worker may spin for the next request (QEMU's name
    for its iothreads' limit). Defaults differ by transport: see docs/performance.md."""
    parser.add_argument(
        "--poll-max-ns",
        type=count,
        default=default,
        metavar="NS",
        help="the longest a worker spins for the next request before it sleeps; the window "
        "adapts to how far apart requests come and stays 0 while they are further apart "
        f"than this (default {default}; 0: always sleep; fsd mount's default is "
        f"{DEFAULT_POLL_MAX_NS})",
    )


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


def refuse_unsupported(args: argparse.Namespace) -> None:
    """StartupError for a refused virtiofsd option that was given."""
    if args.security_label:
        raise StartupError(f"--security-label: {REFUSED['security_label']}")


def filesystem_options(
    args: argparse.Namespace,
    extra_cfg: Sequence[str] = (),
    *,
    defaults: Mapping[str, object] | None = None,
    compat: CompatOptions | None = None,
) -> FsOptions:
    """The ``FsOptions`` the parsed arguments ask for, from ``defaults`` (fsd's if None),
    ``--cfg`` (and ``extra_cfg``, e.g. from crosvm's ``--shared-dir`` form), the virtiofsd
    options and ``-o`` (``compat``), later ones winning. Raises StartupError naming what is
    wrong."""
    refuse_unsupported(args)
    values: dict[str, object] = dict(defaults or {})
    text = ",".join(part for part in [*extra_cfg, *args.cfg] if part.strip(", "))
    try:
        cfg = parse_cfg_values(text)
        FsOptions(**cfg)  # type: ignore[arg-type]  # (its own errors are --cfg's)
    except (TypeError, ValueError) as exc:
        raise StartupError(f"--cfg {text!r}: {exc}") from None
    values.update(cfg)
    given: dict[str, object] = {}
    if args.cache is not None:
        given["cache"] = args.cache
        given["timeout"] = CACHE_TIMEOUTS[args.cache]
    for field in ("readonly", "xattr", "killpriv_v2", "announce_submounts"):
        if getattr(args, field) is not None:
            given[field] = getattr(args, field)
    for field in ("allow_direct_io", "writeback", "allow_mmap", "posix_acl", "readdirplus"):
        if getattr(args, field) is not None:
            given[field] = getattr(args, field)
    if args.inode_file_handles is not None:
        mode = args.inode_file_handles
        given["inode_file_handles"] = "prefer" if mode == "fallback" else mode
    if args.xattrmap is not None:
        given["xattrmap_text"] = args.xattrmap
    if compat is not None:
        given.update(compat.fields)
    if "timeout" in cfg:
        given.pop("timeout", None)  # an explicit --cfg timeout= beats a policy's lifetime
    values.update(given)
    map_text = values.pop("xattrmap_text", None)
    if isinstance(map_text, str):
        try:
            values["xattrmap"] = parse_xattrmap(map_text)
        except XattrMapError as exc:
            raise StartupError(f"--xattrmap {map_text!r}: {exc}") from None
    if "xattr" not in given and (
        values.get("xattrmap") or values.get("rewrite_security_xattrs") or values.get("posix_acl")
    ):
        values["xattr"] = True  # renaming xattrs or ACLs imply serving them, as in virtiofsd
    maps = _id_maps(args)
    if maps is not None:
        values["id_maps"] = maps
    try:
        return FsOptions(**values)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise StartupError(f"filesystem options: {exc}") from None


def _id_maps(args: argparse.Namespace) -> IdMaps | None:
    namespace = args.uid_map or args.gid_map
    translated = args.translate_uid or args.translate_gid
    if namespace and translated:
        raise StartupError(
            "--uid-map/--gid-map and --translate-uid/--translate-gid both map ids: use one kind"
        )
    try:
        if translated:
            return parse_translations(args.translate_uid, args.translate_gid)
        return parse_id_maps(args.uid_map, args.gid_map)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def check_socket_path(option: str, path: str) -> None:
    """StartupError unless a socket can be bound at ``path``: its directory exists, and
    nothing is there but a stale socket (the daemon checks again when it binds)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StartupError(
            f"{option} {path}: directory {directory} does not exist; create it or choose "
            "another path"
        )
    if os.path.lexists(path) and not _socket_activated():
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise StartupError(
                f"{option} {path}: exists and is not a socket; remove it or choose another path"
            )
        if is_listening(path):
            raise StartupError(
                f"{option} {path}: another server is listening on it; stop that one or choose "
                "another path"
            )
    if len(os.fsencode(path)) > 107:
        raise StartupError(
            f"{option} {path}: longer than a Unix socket path may be (107 bytes); choose a "
            "shorter path"
        )


def _socket_activated() -> bool:
    """Whether systemd passed this process listening sockets (``LISTEN_PID``/``LISTEN_FDS``,
    sd_listen_fds(3)): then the socket at the path is ours to adopt, not another server's."""
    return os.environ.get("LISTEN_PID") == str(os.getpid()) and bool(os.environ.get("LISTEN_FDS"))


def check_file_handles(options: FsOptions, shared_dir: str) -> None:
    """StartupError if ``--inode-file-handles mandatory`` cannot work for ``shared_dir``."""
    if options.inode_file_handles != "mandatory":
        return
    fd = os.open(shared_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        problem = probe(fd)
    finally:
        os.close(fd)
    if problem is not None:
        raise StartupError(f"--inode-file-handles mandatory: {problem}")


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
    """The ``StatusConfig`` the parsed arguments ask for; StartupError naming what is wrong."""
    if args.status_socket is not None:
        check_socket_path("--status-socket", args.status_socket)
    try:
        return StatusConfig(args.status_socket, args.latency_histogram)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
