"""The status document in Prometheus' text exposition format (version 0.0.4), pure.

Written here rather than with prometheus_client: the daemon renders one document on demand
and needs none of a client library's registry, locks or global state; the format is lines
of ``name{label="value"} number`` under ``# HELP`` and ``# TYPE`` lines. Label values are
escaped as the format says (backslash, double quote, newline). Metric names are in
docs/status.md; the tests parse the output with prometheus_client's own parser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str | int]
Sample = tuple[str, Labels, float]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str, kind: str, samples: Iterable[Sample]) -> None:
        """One metric family: HELP and TYPE, then its samples (nothing if it has none)."""
        rows = list(samples)
        if not rows:
            return
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for sample_name, labels, value in rows:
            if labels:
                text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{sample_name}{{{text}}} {_number(value)}")
            else:
                self.lines.append(f"{sample_name} {_number(value)}")

    def gauge(self, name: str, help_text: str, value: float, labels: Labels | None = None) -> None:
        self.family(name, help_text, "gauge", [(name, labels or {}, value)])


def render(doc: Mapping[str, Any]) -> str:
    """The exposition of one status document (:meth:`fsd.status.DaemonStatus.snapshot`)."""
    out = _Exposition()
    out.gauge(
        "fsd_info",
        "The daemon: version, transport and shared directory (always 1).",
        1,
        {
            "version": doc["fsd"]["version"],
            "transport": doc["transport"],
            "shared_dir": doc["shared_dir"],
        },
    )
    out.gauge("fsd_start_time_seconds", "When the daemon started (Unix time).", doc["started_at"])
    out.gauge("fsd_uptime_seconds", "Seconds since the daemon started.", doc["uptime_seconds"])
    frontend = doc["frontend"]
    out.gauge(
        "fsd_frontend_connected",
        "1 while a vhost-user front-end (the VMM) is connected.",
        0 if frontend is None else 1,
    )
    if frontend is not None:
        out.gauge(
            "fsd_frontend_info",
            "The connected front-end process (SO_PEERCRED; always 1).",
            1,
            {
                "pid": frontend["pid"],
                "uid": frontend["uid"],
                "gid": frontend["gid"],
                "command": frontend["command"] or "",
            },
        )
    vhost = doc["vhost_user"]
    if vhost is not None:
        out.family(
            "fsd_vhost_user_feature",
            "Virtio feature bits the front-end acked (1 each).",
            "gauge",
            [("fsd_vhost_user_feature", {"name": name}, 1) for name in vhost["features"]],
        )
        out.family(
            "fsd_vhost_user_protocol_feature",
            "vhost-user protocol feature bits the front-end acked (1 each).",
            "gauge",
            [
                ("fsd_vhost_user_protocol_feature", {"name": name}, 1)
                for name in vhost["protocol_features"]
            ],
        )
        out.gauge(
            "fsd_guest_memory_regions", "Guest memory regions mapped.", vhost["memory_regions"]
        )
        out.gauge("fsd_guest_memory_bytes", "Guest memory mapped, bytes.", vhost["memory_bytes"])
        queues = vhost["queues"]
        out.family(
            "fsd_queue_running",
            "1 while the virtqueue is being served.",
            "gauge",
            [("fsd_queue_running", {"queue": q["index"]}, int(q["running"])) for q in queues],
        )
        out.family(
            "fsd_queue_requests_total",
            "Descriptor chains (requests) taken from the virtqueue.",
            "counter",
            [("fsd_queue_requests_total", {"queue": q["index"]}, q["requests"]) for q in queues],
        )
        out.family(
            "fsd_queue_interrupts_total",
            "Interrupts (call eventfd writes) sent to the driver for the virtqueue.",
            "counter",
            [
                ("fsd_queue_interrupts_total", {"queue": q["index"]}, q["interrupts"])
                for q in queues
            ],
        )
    out.gauge(
        "fsd_thread_pool_size",
        "Request worker threads (0: each queue serves its own requests).",
        doc["thread_pool_size"],
    )
    fuse = doc["fuse"]
    out.gauge(
        "fsd_fuse_initialized", "1 once the client's FUSE INIT succeeded.", int(fuse["initialized"])
    )
    if fuse["initialized"]:
        out.gauge(
            "fsd_fuse_session_info",
            "The negotiated FUSE protocol version (always 1).",
            1,
            {"major": fuse["major"], "minor": fuse["minor"]},
        )
        out.family(
            "fsd_fuse_init_flag",
            "FUSE INIT capability flags granted to the client (1 each).",
            "gauge",
            [("fsd_fuse_init_flag", {"name": name}, 1) for name in fuse["flags"]],
        )
    requests = doc["requests"]
    by_opcode = requests["by_opcode"]
    out.family(
        "fsd_requests_total",
        "FUSE requests served, by opcode.",
        "counter",
        [("fsd_requests_total", {"opcode": op}, v["requests"]) for op, v in by_opcode.items()],
    )
    out.family(
        "fsd_request_errors_total",
        "FUSE requests answered with an error, by opcode.",
        "counter",
        [("fsd_request_errors_total", {"opcode": op}, v["errors"]) for op, v in by_opcode.items()],
    )
    out.family(
        "fsd_malformed_requests_total",
        "FUSE requests refused before decoding (bad length or arguments).",
        "counter",
        [("fsd_malformed_requests_total", {}, requests["malformed"])],
    )
    latency = doc["latency"]
    if latency is not None:
        out.family(
            "fsd_request_duration_seconds",
            "Time the daemon took per FUSE request, by opcode (with --latency-histogram).",
            "histogram",
            _histogram_samples(latency),
        )
    out.gauge(
        "fsd_open_inodes",
        "Inodes the client holds (its lookups), root included.",
        doc["open"]["inodes"],
    )
    out.gauge("fsd_open_handles", "Open file and directory handles.", doc["open"]["handles"])
    allowlist = doc["allowlist"]
    out.gauge(
        "fsd_allowlist_enabled",
        "1 if a control socket restricts what the client sees (--allowlist-socket-path).",
        0 if allowlist is None else 1,
    )
    if allowlist is not None:
        out.gauge("fsd_allowlist_paths", "Paths added to the allowlist.", len(allowlist["paths"]))
    out.family(
        "fsd_plugin_info",
        "A loaded plugin (1 each).",
        "gauge",
        [("fsd_plugin_info", {"name": name}, 1) for name in doc["plugins"]],
    )
    sandbox = doc.get("sandbox")
    if sandbox is not None:
        labels = {"mode": sandbox["mode"], "seccomp": sandbox["seccomp"]}
        out.family(
            "fsd_sandbox_info",
            "The sandbox the daemon runs in (--sandbox, --seccomp), 1.",
            "gauge",
            [("fsd_sandbox_info", labels, 1)],
        )
    return "\n".join(out.lines) + "\n"


def _histogram_samples(latency: Mapping[str, Any]) -> list[Sample]:
    name = "fsd_request_duration_seconds"
    bounds = [*latency["bounds_seconds"], math.inf]
    samples: list[Sample] = []
    for opcode, row in latency["by_opcode"].items():
        for bound, count in zip(bounds, row["buckets"], strict=True):
            le = "+Inf" if math.isinf(bound) else repr(float(bound))
            samples.append((f"{name}_bucket", {"opcode": opcode, "le": le}, count))
        samples.append((f"{name}_sum", {"opcode": opcode}, row["sum_seconds"]))
        samples.append((f"{name}_count", {"opcode": opcode}, row["count"]))
    return samples
