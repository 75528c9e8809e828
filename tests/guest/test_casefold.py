"""``--cfg ascii_casefold=true`` with a real guest: names in any ASCII case reach the host's
files, for reading, writing into, removing and renaming; the guest lists the host's spelling."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fsd.testing.guest import Backend, FsdServing, run_guest

pytestmark = pytest.mark.guest

WORKLOAD = r"""
echo "read=$(cat readme.txt)"
echo "into=$(echo guest > docs/NOTES.txt && echo ok)"
echo "list=$(ls | tr '\n' ' ')"
rm photo.jpg && echo "rm=ok"
mv OLD.log new.log && echo "mv=ok"
rmdir EMPTY && echo "rmdir=ok"
echo "missing=$(cat nothing.txt 2>&1 | sed 's/.*: //')"
"""


@pytest.fixture
async def folding_backend(fsd_serving: FsdServing) -> AsyncIterator[Backend]:
    async with fsd_serving("--cfg", "ascii_casefold=true") as backend:
        yield backend


async def test_names_reach_host_files_in_any_case(
    folding_backend: Backend, shared_dir: Path
) -> None:
    (shared_dir / "ReadMe.TXT").write_text("from the host")
    (shared_dir / "Docs").mkdir()
    (shared_dir / "Photo.JPG").write_bytes(b"jpg")
    (shared_dir / "old.LOG").write_text("log")
    (shared_dir / "Empty").mkdir()
    result = await run_guest(WORKLOAD, socket_path=folding_backend.socket_path, time_limit=120)
    assert result.exit_status == 0, f"{result.describe()}\n{folding_backend.log()}"
    got = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert got["read"] == "from the host"
    assert got["into"] == "ok"
    assert got["list"] == "Docs Empty Photo.JPG ReadMe.TXT old.LOG "
    assert (got["rm"], got["mv"], got["rmdir"]) == ("ok", "ok", "ok")
    assert got["missing"] == "No such file or directory"
    assert sorted(os.listdir(shared_dir)) == ["Docs", "ReadMe.TXT", "new.log"]
    assert (shared_dir / "Docs" / "NOTES.txt").read_text() == "guest\n"
    assert (shared_dir / "new.log").read_text() == "log"
