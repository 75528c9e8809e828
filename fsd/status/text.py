"""The status document for a person (``fsd status``), pure: a few lines, then tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["duration", "render"]


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12.5s``: the two largest units."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value, units = n / 1024, ["KiB", "MiB", "GiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f} {units[0]}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns two spaces apart, indented; numbers right-aligned, words left-aligned."""
    columns = list(zip(header, *rows, strict=True))
    widths = [max(len(cell) for cell in column) for column in columns]
    numeric = [all(_is_number(cell) for cell in column[1:]) for column in columns]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _is_number(cell: str) -> bool:
    return cell == "-" or cell[:1].isdigit()


def _quantile(bounds: Sequence[float], buckets: Sequence[int], q: float) -> str:
    """The bucket bound below which a fraction ``q`` of the requests fell (an upper bound)."""
    total = buckets[-1]
    if not total:
        return "-"
    for bound, count in zip(bounds, buckets, strict=False):
        if count >= q * total:
            return _seconds(bound)
    return f">{_seconds(bounds[-1])}"


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.3g}µs"
    if value < 1:
        return f"{value * 1e3:.3g}ms"
    return f"{value:.3g}s"


def render(doc: Mapping[str, Any]) -> str:
    """Human-readable lines for one status document."""
    lines = [
        f"fsd {doc['fsd']['version']}, pid {doc['fsd']['pid']}, "
        f"up {duration(doc['uptime_seconds'])}"
    ]
    if doc["transport"] == "vhost-user":
        where = f" on {doc['socket']}" if doc["socket"] else ""
        lines.append(f"serving {doc['shared_dir']} over vhost-user{where}")
    else:
        lines.append(f"serving {doc['shared_dir']} through /dev/fuse on {doc['mountpoint']}")
    lines += _frontend(doc)
    lines += _fuse(doc["fuse"])
    opened = doc["open"]
    lines.append(
        f"open: {_plural(opened['inodes'], 'inode')} (root included), "
        f"{_plural(opened['handles'], 'handle')}"
    )
    allowlist = doc["allowlist"]
    if allowlist is None:
        lines.append("allowlist: off (the whole shared directory is visible)")
    elif allowlist["paths"]:
        lines.append("allowlist: " + " ".join(allowlist["paths"]))
    else:
        lines.append("allowlist: empty (nothing is visible)")
    lines.append("plugins: " + (" ".join(doc["plugins"]) or "none"))
    sandbox = doc.get("sandbox")
    if sandbox is not None:
        userns = ", user namespace" if sandbox["user_namespace"] else ""
        lines.append(
            f"sandbox: {sandbox['mode']}{userns}, seccomp {sandbox['seccomp']}, capabilities "
            + (" ".join(sandbox["capabilities"]) or "none")
        )
    lines += _requests(doc["requests"], doc["latency"])
    return "\n".join(lines) + "\n"


def _frontend(doc: Mapping[str, Any]) -> list[str]:
    if doc["transport"] != "vhost-user":
        return ["client: the host kernel (FUSE mount)"]
    fe = doc["frontend"]
    if fe is None:
        return ["front-end: none connected yet"]
    command = f" ({fe['command']})" if fe["command"] else ""
    lines = [
        f"front-end: pid {fe['pid']}{command}, uid {fe['uid']}, gid {fe['gid']}, "
        f"connected {duration(fe['connected_seconds'])} ago"
    ]
    vhost = doc["vhost_user"]
    if vhost is not None:
        lines.append("virtio features: " + (" ".join(vhost["features"]) or "none acked yet"))
        lines.append(
            "vhost-user protocol features: " + (" ".join(vhost["protocol_features"]) or "none")
        )
        lines.append(
            f"guest memory: {_plural(vhost['memory_regions'], 'region')}, "
            f"{_size(vhost['memory_bytes'])}"
        )
        pool = doc["thread_pool_size"]
        lines.append(
            "queues ("
            + (f"thread pool of {pool}" if pool else "each serves its own requests")
            + "):"
        )
        lines += _table(
            ["queue", "state", "requests", "interrupts"],
            [
                [
                    str(q["index"]),
                    "running" if q["running"] else "stopped",
                    str(q["requests"]),
                    str(q["interrupts"]),
                ]
                for q in vhost["queues"]
            ],
        )
    return lines


def _fuse(fuse: Mapping[str, Any]) -> list[str]:
    if not fuse["initialized"]:
        return ["FUSE: not initialised yet (no INIT from the client)"]
    return [
        f"FUSE: protocol {fuse['major']}.{fuse['minor']}, "
        f"max readahead {_size(fuse['max_readahead'])}",
        "FUSE flags: " + (" ".join(fuse["flags"]) or "none"),
    ]


def _requests(requests: Mapping[str, Any], latency: Mapping[str, Any] | None) -> list[str]:
    lines = [
        f"requests: {requests['total']} served, {requests['errors']} answered with an error, "
        f"{requests['malformed']} malformed"
    ]
    by_opcode = requests["by_opcode"]
    timed = latency["by_opcode"] if latency is not None else {}
    if not by_opcode and not timed:
        return lines
    header = ["opcode", "requests", "errors"]
    if latency is not None:
        header += ["mean", "p50", "p99"]
    rows = []
    for opcode in sorted(set(by_opcode) | set(timed), key=lambda op: (-_count(by_opcode, op), op)):
        counts = by_opcode.get(opcode, {"requests": 0, "errors": 0})
        row = [opcode, str(counts["requests"]), str(counts["errors"])]
        if latency is not None:
            hist = timed.get(opcode)
            if hist is None or not hist["count"]:
                row += ["-", "-", "-"]
            else:
                bounds, buckets = latency["bounds_seconds"], hist["buckets"]
                row += [
                    _seconds(hist["sum_seconds"] / hist["count"]),
                    _quantile(bounds, buckets, 0.5),
                    _quantile(bounds, buckets, 0.99),
                ]
        rows.append(row)
    lines += _table(header, rows)
    if latency is not None:
        lines.append("  (p50, p99: the histogram bucket bound below which they fell)")
    return lines


def _count(by_opcode: Mapping[str, Any], opcode: str) -> int:
    entry = by_opcode.get(opcode)
    return int(entry["requests"]) if entry else 0
