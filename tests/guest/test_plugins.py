"""Plugins under a real guest: the audit log records the guest's operations, and a policy
plugin's denials reach the guest as errnos."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fsd.testing.guest import (
    Backend,
    GuestImage,
    fsd_env,
    fsd_serve_command,
    run_guest,
    running_backend,
)

pytestmark = pytest.mark.guest

WORKLOAD = r"""
echo "data from the guest" > rw/new.txt
cat rw/new.txt > /dev/null
mv rw/new.txt rw/renamed.txt
if echo nope > ro/blocked.txt 2>/dev/null; then echo ro_write=allowed; else echo ro_write=denied; fi
if cat ro/readable.txt > /dev/null; then echo "ro_read=ok"; fi
if rm ro/readable.txt 2>/dev/null; then echo "ro_rm=allowed"; else echo "ro_rm=denied"; fi
if cat secret/key.txt 2>/dev/null; then echo "secret=read"; else echo "secret=denied"; fi
"""


@pytest.fixture
async def plugged_backend(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[Backend, Path]]:
    if "fsd_audit_log" not in sys.modules:
        pytest.importorskip("fsd_audit_log")
    for name in ("rw", "ro", "secret"):
        (shared_dir / name).mkdir()
    (shared_dir / "ro" / "readable.txt").write_text("read me\n")
    (shared_dir / "secret" / "key.txt").write_text("hidden\n")
    # Each in a directory of its own beside the share: the plugins keep those directories
    # in the sandbox, which refuses one around the share.
    (tmp_path / "policy").mkdir()
    (tmp_path / "log").mkdir()
    rules = tmp_path / "policy" / "policy.toml"
    rules.write_text('read_only = ["/ro"]\ndeny = ["/secret"]\n')
    audit = tmp_path / "log" / "audit.jsonl"
    socket_path = socket_dir / "fs.sock"
    argv = fsd_serve_command(
        socket_path,
        shared_dir,
        "--plugin", "audit-log", "--plugin-cfg", f"audit-log:path={audit},classes=all",
        "--plugin", "access-policy", "--plugin-cfg", f"access-policy:rules={rules}",
    )  # fmt: skip
    log_path = tmp_path / "backend.log"
    async with running_backend(argv, socket_path, log_path=log_path, env=fsd_env()) as backend:
        yield backend, audit


async def test_audit_and_policy_in_a_guest(
    guest_image: GuestImage, plugged_backend: tuple[Backend, Path], shared_dir: Path
) -> None:
    backend, audit = plugged_backend
    result = await run_guest(
        WORKLOAD, socket_path=backend.socket_path, guest_image=guest_image, time_limit=180
    )
    assert result.exit_status == 0, f"{result.describe()}\n{backend.log()}"
    got = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert got == {
        "ro_write": "denied",
        "ro_read": "ok",
        "ro_rm": "denied",
        "secret": "denied",
    }
    assert (shared_dir / "rw" / "renamed.txt").read_text() == "data from the guest\n"
    assert (shared_dir / "ro" / "readable.txt").exists()
    assert not (shared_dir / "ro" / "blocked.txt").exists()

    records = [json.loads(line) for line in audit.read_text().splitlines()]
    ops = [(r["op"], r.get("path"), r["error"]) for r in records]
    assert any(op == "INIT" for op, _, _ in ops)
    assert ("CREATE", "/rw/new.txt", 0) in ops
    writes = [r for r in records if r["op"] == "WRITE" and r["path"] == "/rw/new.txt"]
    assert sum(r["bytes"] for r in writes) == len("data from the guest\n")
    assert any(
        r["op"] == "RENAME" and r["path"] == "/rw/new.txt" and r["path2"] == "/rw/renamed.txt"
        for r in records
    )
    erofs, eacces = 30, 13
    assert ("CREATE", "/ro/blocked.txt", erofs) in ops
    assert ("UNLINK", "/ro/readable.txt", erofs) in ops
    assert ("LOOKUP", "/secret", eacces) in ops  # the denied directory itself is not found
    # Every record is attributed to a guest process, and nothing outside what the workload
    # touched appears.
    touched = {None, "/", "/rw", "/ro", "/secret"}
    for record in records:
        path = record.get("path")
        assert path in touched or path.startswith(("/rw/", "/ro/", "/secret/")), record
