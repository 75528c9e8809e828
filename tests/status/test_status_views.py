"""The status view's pure parts, in-process on a real FUSE server and passthrough filesystem:
the latency histograms and their wrapper, the document, its text and Prometheus renderings,
and the little HTTP of the status socket."""

from __future__ import annotations

import itertools
import json
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from fsd.allowlist import Allowlist, normalize
from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer
from fsd.fuse.abi import InitFlag, Opcode
from fsd.plugins import Plugins
from fsd.status import (
    DaemonStatus,
    RequestLatency,
    StatusConfig,
    prometheus,
    text,
    timed_handler,
)
from fsd.status.http import (
    MAX_HEAD,
    HttpError,
    Response,
    encode_response,
    head_complete,
    parse_request_head,
    parse_response,
)
from fsd.status.latency import BOUNDS_NS, SLOTS
from fsd.status.server import answer
from fsd.status.snapshot import flag_names
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient
from fsd.vhost_user.messages import VirtioFeatures
from tests.status.exposition import parse_exposition, sample_value

ROOT = 1


# --- latency ---------------------------------------------------------------------------------


def test_bucket_bounds_are_inclusive_upper_bounds() -> None:
    latency = RequestLatency()
    latency.observe(Opcode.GETATTR, BOUNDS_NS[0])  # exactly 10 µs: the first bucket (le)
    latency.observe(Opcode.GETATTR, BOUNDS_NS[0] + 1)
    latency.observe(Opcode.GETATTR, 60 * 10**9)  # above every bound: the +Inf bucket
    row = latency.rows[Opcode.GETATTR]
    assert row is not None
    assert (row[0], row[1], row[-1], sum(row)) == (1, 1, 1, 3)
    assert latency.sums_ns[Opcode.GETATTR] == 2 * BOUNDS_NS[0] + 1 + 60 * 10**9
    assert all(a < b for a, b in itertools.pairwise(BOUNDS_NS))


def test_observe_puts_unknown_opcodes_in_slot_zero() -> None:
    latency = RequestLatency()
    for opcode in (0, SLOTS, 4096, 2**32 - 1):
        latency.observe(opcode, 1)
    assert latency.rows[0] is not None and sum(latency.rows[0]) == 4
    assert all(row is None for row in latency.rows[1:])


@pytest.fixture
def timed(server: FuseServer) -> tuple[FuseClient, RequestLatency]:
    """A client whose requests go through the timing wrapper around the real server."""
    latency = RequestLatency()
    client = FuseClient(SimpleNamespace(handle=timed_handler(server.handle, latency)))
    client.init()
    return client, latency


def test_timed_handler_counts_each_request_under_its_opcode(
    timed: tuple[FuseClient, RequestLatency], share: Path
) -> None:
    client, latency = timed
    (share / "f").write_text("x")
    for _ in range(3):
        client.call(fr.getattr(client.next_unique(), ROOT))
    reply = fr.parse_reply(client.call(fr.lookup(client.next_unique(), ROOT, "missing")))
    assert reply.error != 0  # errors are timed too
    counted = {op: sum(row or []) for op, row in enumerate(latency.rows)}
    assert (counted[Opcode.INIT], counted[Opcode.GETATTR], counted[Opcode.LOOKUP]) == (1, 3, 1)
    assert latency.sums_ns[Opcode.GETATTR] > 0


def test_timed_handler_passes_replies_through_and_survives_short_requests(
    server: FuseServer,
) -> None:
    latency = RequestLatency()
    handle = timed_handler(server.handle, latency)
    space = bytearray(4096)
    # No readable segment at all, a first segment too short for the opcode, a 4096 opcode.
    assert handle([], [memoryview(space)]) == server.handle([], [memoryview(space)])
    handle([memoryview(b"\x28\0\0")], [memoryview(space)])
    odd = bytearray(fr.getattr(2, ROOT))
    struct.pack_into("<I", odd, 4, 4096)
    size = handle([memoryview(odd)], [memoryview(space)])
    assert fr.parse_reply(bytes(space[:size])).error != 0
    assert latency.rows[0] is not None and sum(latency.rows[0]) == 3
    # And a good request's reply is exactly the server's own.
    good = fr.init_request(4)
    size = handle([memoryview(good)], [memoryview(space)])
    assert fr.parse_reply(bytes(space[:size])).error == 0


def test_latency_histogram_needs_the_status_socket() -> None:
    with pytest.raises(ValueError, match="--status-socket"):
        StatusConfig(None, latency_histogram=True)
    assert StatusConfig("/run/s", latency_histogram=True).latency_histogram


# --- the document ----------------------------------------------------------------------------


@pytest.fixture
def live(share: Path, daemon_umask: None) -> tuple[DaemonStatus, FuseClient]:
    """A status over a real server with an allowlist and a plugin, and a client of it."""
    allowlist = Allowlist()
    allowlist.add([normalize("/a"), normalize("/b/c")])
    fs = PassthroughFs(share, FsOptions(), allowlist=allowlist)
    server = FuseServer(fs, transport="dev-fuse")
    latency = RequestLatency()
    plugins = Plugins()
    plugins.register(SimpleNamespace(), name="quiet-plugin")
    status = DaemonStatus(
        transport="dev-fuse",
        shared_dir=str(share),
        server=server,
        tables=fs,
        allowlist=allowlist,
        plugins=plugins,
        mountpoint="/mnt/x",
        latency=latency,
    )
    client = FuseClient(SimpleNamespace(handle=timed_handler(server.handle, latency)))
    return status, client


def test_document_before_init(live: tuple[DaemonStatus, FuseClient]) -> None:
    status, _ = live
    doc = status.snapshot()
    assert doc["schema"] == 1
    assert doc["fsd"]["pid"] == os.getpid()
    assert doc["fuse"]["initialized"] is False
    assert doc["requests"] == {"total": 0, "errors": 0, "malformed": 0, "by_opcode": {}}
    assert doc["open"] == {"inodes": 1, "handles": 0}  # the root
    assert doc["allowlist"] == {"paths": ["/a", "/b/c"]}
    assert doc["plugins"] == ["quiet-plugin"]
    assert doc["frontend"] is None and doc["vhost_user"] is None
    assert doc["latency"]["by_opcode"] == {}
    json.dumps(doc, allow_nan=False)  # JSON-ready as it is


def test_document_counts_what_was_served(
    live: tuple[DaemonStatus, FuseClient], share: Path
) -> None:
    status, client = live
    (share / "a").mkdir()
    (share / "a" / "f").write_text("data")
    client.init()
    a = fr.parse_entry(fr.parse_reply(client.call(fr.lookup(client.next_unique(), ROOT, "a")))
                       .payload).nodeid  # fmt: skip
    f = fr.parse_entry(fr.parse_reply(client.call(fr.lookup(client.next_unique(), a, "f")))
                       .payload).nodeid  # fmt: skip
    fh = fr.parse_open(fr.parse_reply(client.call(fr.open_(client.next_unique(), f))).payload)[0]
    hidden = fr.parse_reply(client.call(fr.lookup(client.next_unique(), ROOT, "hidden")))
    assert hidden.error != 0
    client.call(b"\x08\0\0\0")  # shorter than an in_header: malformed
    doc = status.snapshot()
    assert doc["fuse"]["initialized"] is True
    assert doc["fuse"]["major"] == 7 and doc["fuse"]["minor"] >= 31
    assert "ASYNC_READ" in doc["fuse"]["flags"]
    assert doc["requests"]["by_opcode"] == {
        "INIT": {"requests": 1, "errors": 0},
        "LOOKUP": {"requests": 3, "errors": 1},
        "OPEN": {"requests": 1, "errors": 0},
    }
    assert (doc["requests"]["total"], doc["requests"]["errors"]) == (5, 1)
    assert doc["requests"]["malformed"] == 1
    assert doc["open"] == {"inodes": 3, "handles": 1}
    timed = doc["latency"]["by_opcode"]
    assert {op: row["count"] for op, row in timed.items()} == {
        "INIT": 1, "LOOKUP": 3, "OPEN": 1, "other": 1,
    }  # fmt: skip
    assert len(timed["LOOKUP"]["buckets"]) == len(BOUNDS_NS) + 1
    client.call(fr.release(client.next_unique(), f, fh))
    client.call(fr.forget(client.next_unique(), f, 1))
    assert status.snapshot()["open"] == {"inodes": 2, "handles": 0}


def test_flag_names_name_known_bits_and_number_the_others() -> None:
    value = VirtioFeatures.VERSION_1 | VirtioFeatures.RING_EVENT_IDX | 1 << 3
    assert flag_names(value, VirtioFeatures) == ["bit 3", "RING_EVENT_IDX", "VERSION_1"]
    assert flag_names(int(InitFlag.ASYNC_READ | InitFlag.HAS_RESEND), InitFlag) == [
        "ASYNC_READ",
        "HAS_RESEND",
    ]
    assert flag_names(0, InitFlag) == []


# --- renderings ------------------------------------------------------------------------------


def test_text_rendering(live: tuple[DaemonStatus, FuseClient]) -> None:
    status, client = live
    client.init()
    client.call(fr.getattr(client.next_unique(), ROOT))
    out = text.render(status.snapshot())
    assert f"serving {status.shared_dir} through /dev/fuse on /mnt/x" in out
    assert "client: the host kernel (FUSE mount)" in out
    assert "allowlist: /a /b/c" in out
    assert "plugins: quiet-plugin" in out
    assert "open: 1 inode (root included), 0 handles" in out
    assert "requests: 2 served, 0 answered with an error, 0 malformed" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert rows["GETATTR"][:2] == ["1", "0"] and rows["INIT"][:2] == ["1", "0"]
    assert len(rows["GETATTR"]) == 5  # requests, errors, mean, p50, p99


def test_prometheus_rendering_parses(live: tuple[DaemonStatus, FuseClient]) -> None:
    status, client = live
    client.init()
    for _ in range(4):
        client.call(fr.getattr(client.next_unique(), ROOT))
    client.call(fr.lookup(client.next_unique(), ROOT, "hidden"))
    status.shared_dir = 'a "quoted"\\dir\nwith a newline'  # label escaping
    samples = parse_exposition(prometheus.render(status.snapshot()))
    assert sample_value(samples, "fsd_requests_total", opcode="GETATTR") == 4
    assert sample_value(samples, "fsd_request_errors_total", opcode="LOOKUP") == 1
    assert sample_value(samples, "fsd_request_duration_seconds_count", opcode="GETATTR") == 4
    assert sample_value(samples, "fsd_request_duration_seconds_bucket", opcode="GETATTR",
                        le="+Inf") == 4  # fmt: skip
    assert sample_value(samples, "fsd_open_inodes") == 1
    assert sample_value(samples, "fsd_allowlist_paths") == 2
    assert sample_value(samples, "fsd_plugin_info", name="quiet-plugin") == 1
    assert sample_value(samples, "fsd_fuse_initialized") == 1
    info = [s for s in samples if s.name == "fsd_info"]
    assert info[0].labels["shared_dir"] == status.shared_dir


# --- HTTP ------------------------------------------------------------------------------------


def test_request_heads() -> None:
    assert parse_request_head(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n") == ("GET", "/status")
    assert parse_request_head(b"GET /metrics?x=1 HTTP/1.0\n\n") == ("GET", "/metrics")
    assert head_complete(b"GET / HTTP/1.1\r\n\r\n") and not head_complete(b"GET / HTTP/1.1\r\n")
    for head, status in [
        (b"hello\r\n\r\n", 400),
        (b"GET /status HTTP/2.0\r\n\r\n", 505),
        (b"GET /status HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET status HTTP/1.1\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),
    ]:
        with pytest.raises(HttpError) as caught:
            parse_request_head(head)
        assert caught.value.status == status, head[:40]


def test_responses_round_trip() -> None:
    data = encode_response(200, b'{"a": 1}', "application/json")
    response = parse_response(data)
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert response.body == b'{"a": 1}'
    with pytest.raises(ValueError, match="Content-Length"):
        parse_response(data[:-1])
    with pytest.raises(ValueError, match="not an HTTP response"):
        parse_response(b'"Ok"')


def test_answers_by_path(live: tuple[DaemonStatus, FuseClient]) -> None:
    status, _ = live

    def get(path: str) -> Response:
        return parse_response(answer(status, f"GET {path} HTTP/1.1\r\n\r\n".encode()))

    as_json = get("/status")
    assert as_json.headers["content-type"] == "application/json"
    assert json.loads(as_json.body)["transport"] == "dev-fuse"
    metrics = get("/metrics")
    assert metrics.headers["content-type"] == prometheus.CONTENT_TYPE
    parse_exposition(metrics.body.decode())
    assert get("/").body.decode().startswith("fsd ")
    missing = get("/nope")
    assert missing.status == 404 and b"/metrics" in missing.body
    post = parse_response(answer(status, b"POST /status HTTP/1.1\r\n\r\n"))
    assert post.status == 405 and post.headers["allow"] == "GET"
