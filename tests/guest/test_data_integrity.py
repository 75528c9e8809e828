"""Random interleaved writes, truncates and reads in a real guest, checked against a model.

The host turns a seed into a script of busybox ``dd``/``truncate`` commands on two files; the
guest runs it and prints a checksum after every read and at checkpoints; the host replays the
same script on a ``bytearray`` model and compares every checksum and the final files. Writes
land at random (unaligned) offsets, past EOF (holes), and across page boundaries, so the guest
page cache, the FUSE requests and the host file must agree at every step.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fsd.testing.guest import GuestRunner

pytestmark = pytest.mark.guest

PATTERN_SIZE = 256 * 1024
FILES = ("one.bin", "two.bin")
STEPS = 160


def _script(seed: int, pattern: bytes) -> tuple[str, list[str], dict[str, bytearray]]:
    """The guest script, the expected output lines, and the expected final files."""
    rng = random.Random(seed)
    model = {name: bytearray() for name in FILES}
    lines = ["set -e", "cd work"]
    expected: list[str] = []
    for name in FILES:
        lines.append(f": > {name}")
    for step in range(STEPS):
        name = rng.choice(FILES)
        data = model[name]
        op = rng.choices(["write", "truncate", "read", "check"], [6, 1, 3, 1])[0]
        if op == "write":
            offset = rng.randrange(0, 600_000)
            count = rng.choice([1, 7, 4095, 4096, 4097, rng.randrange(1, 70_000)])
            skip = rng.randrange(0, PATTERN_SIZE - count)
            lines.append(
                f"dd if=../pattern.bin of={name} bs=65536 iflag=skip_bytes,count_bytes "
                f"oflag=seek_bytes conv=notrunc skip={skip} count={count} seek={offset} "
                "status=none"
            )
            if len(data) < offset:
                data.extend(bytes(offset - len(data)))
            data[offset : offset + count] = pattern[skip : skip + count]
        elif op == "truncate":
            size = rng.randrange(0, 700_000)
            lines.append(f"truncate -s {size} {name}")
            if size < len(data):
                del data[size:]
            else:
                data.extend(bytes(size - len(data)))
        elif op == "read":
            offset = rng.randrange(0, 650_000)
            count = rng.randrange(1, 100_000)
            lines.append(
                f"echo r{step}=$(dd if={name} bs=65536 iflag=skip_bytes,count_bytes "
                f"skip={offset} count={count} status=none | md5sum | cut -d' ' -f1)"
            )
            expected.append(f"r{step}={hashlib.md5(data[offset : offset + count]).hexdigest()}")
        else:
            lines.append(f"echo c{step}=$(md5sum {name} | cut -d' ' -f1):$(stat -c %s {name})")
            expected.append(f"c{step}={hashlib.md5(data).hexdigest()}:{len(data)}")
    lines.append("sync")
    return "\n".join(lines) + "\n", expected, model


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_io_matches_a_model(
    run_in_guest: GuestRunner,
    shared_dir: Path,
    seed: int,
    record_property: Callable[[str, object], None],
) -> None:
    pattern = random.Random(seed * 7919).randbytes(PATTERN_SIZE)
    (shared_dir / "pattern.bin").write_bytes(pattern)
    (shared_dir / "work").mkdir()
    script, expected, model = _script(seed, pattern)
    result = await run_in_guest(script)
    got = [
        line.strip()
        for line in result.output.splitlines()
        if line.strip()[:1] in ("r", "c") and "=" in line
    ]
    got = [line for line in got if line.split("=", 1)[0][1:].isdigit()]
    record_property("checks", len(expected))
    assert got == expected
    for name, data in model.items():
        host = (shared_dir / "work" / name).read_bytes()
        assert len(host) == len(data), name
        assert host == bytes(data), name
