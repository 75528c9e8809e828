"""Every shell block in README.md and docs/ runs, as a reader would run it (see doc_blocks.py
for the rules): each page's ```sh blocks, in order, in one bash session with ``set -e`` (a
``cd`` or a variable carries over to the next block, a failing command fails the page), in a
fresh copy of the source tree as the working directory, with a scratch $HOME and $TMPDIR,
and this test run's fsd on $PATH. Background jobs a page leaves are stopped at its end.
Blocks marked ``<!-- doc-test: skip (reason) -->`` are reported as skipped with the reason.
New pages are picked up by themselves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fsd.resources import guest_image_dir
from fsd.testing.guest import REPO_ROOT
from tests.docs.doc_blocks import Block, DocError, parse_blocks
from tests.source_tree import copy_source_tree

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
PAGE_TIME_LIMIT = 600


def _parsed() -> dict[Path, list[Block] | DocError]:
    parsed: dict[Path, list[Block] | DocError] = {}
    for page in PAGES:
        try:
            parsed[page] = parse_blocks(page)
        except DocError as exc:
            parsed[page] = exc
    return parsed


PARSED = _parsed()


def _name(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def test_every_page_parses() -> None:
    """Every fence labelled and closed, every directive known (a DocError names the line)."""
    errors = [str(result) for result in PARSED.values() if isinstance(result, DocError)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "block",
    [b for blocks in PARSED.values() if isinstance(blocks, list) for b in blocks if b.skip],
    ids=lambda b: b.where(REPO_ROOT),
)
def test_skipped_shell_block(block: Block) -> None:
    pytest.skip(f"{block.where(REPO_ROOT)}: {block.skip}")


def _session(blocks: list[Block]) -> str:
    """One bash script: each block between markers on fd 3, background jobs stopped at exit."""
    parts = [
        "set -e -o pipefail",
        'exec 3>"$DOCTEST_MARKS"',
        "trap 'jobs=$(jobs -p); [ -z \"$jobs\" ] || kill $jobs 2>/dev/null || true' EXIT",
    ]
    for index, block in enumerate(blocks):
        parts.append(f"echo 'start {index}' >&3")
        parts.append(block.text.rstrip("\n"))
        parts.append(f"echo 'end {index}' >&3")
    return "\n".join(parts) + "\n"


def _stop_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


@pytest.mark.parametrize(
    "page",
    [p for p, blocks in PARSED.items() if isinstance(blocks, list) and any(b.runs for b in blocks)],
    ids=_name,
)
def test_shell_blocks_run(page: Path, tmp_path: Path) -> None:
    blocks = PARSED[page]
    assert isinstance(blocks, list)
    runnable = [b for b in blocks if b.runs]
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    tree = copy_source_tree(tmp_path / "src")
    marks, log = tmp_path / "marks", tmp_path / "output"
    script = tmp_path / "session.sh"
    script.write_text(_session(runnable))
    env = {
        **os.environ,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FSD_TESTBED_DIR": str(guest_image_dir()),
        "DOCTEST_MARKS": str(marks),
        "LANG": "C.UTF-8",
    }
    env.pop("PYTHONPATH", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)], cwd=tree, env=env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            status: int | str = proc.wait(timeout=PAGE_TIME_LIMIT)
        except subprocess.TimeoutExpired:
            _stop_group(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"killed after {PAGE_TIME_LIMIT} s"
        finally:
            _stop_group(proc.pid, signal.SIGTERM)  # whatever the page left running
    if status == 0:
        return
    started = [
        line.split()[1] for line in marks.read_text().splitlines() if line.startswith("start")
    ]
    failed = runnable[int(started[-1])] if started else runnable[0]
    output = log.read_text(errors="replace").splitlines()[-80:]
    pytest.fail(
        f"{failed.where(REPO_ROOT)}: the shell block failed ({status}):\n{failed.text}\n"
        "--- output (last 80 lines) ---\n" + "\n".join(output),
        pytrace=False,
    )
