"""The blocks of docs/vmms.md that tests run: each follows a ``<!-- fsd-test: NAME -->``
comment (and, for a shell block, a ``<!-- doc-test: skip (...) -->`` that keeps the plain
docs runner from running it with the documentation's paths). Paths in them are the
documentation's; :func:`localize` swaps in a test's."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DOC", "block", "blocks", "command", "localize"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "vmms.md"
#: The marker, then (for shell blocks) the docs runner's skip directive, then the block.
_MARKED = re.compile(
    r"<!-- fsd-test: (\S+)[^>]*-->\n(?:<!-- doc-test: [^>]*-->\n)?```(\w+)\n(.*?)```", re.S
)


def blocks() -> dict[str, tuple[str, str]]:
    """Every marked block: name → (language, text)."""
    return {m.group(1): (m.group(2), m.group(3)) for m in _MARKED.finditer(DOC.read_text())}


def block(name: str) -> str:
    """The text of the block ``name``."""
    return blocks()[name][1]


def localize(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with each documented path replaced by the test's (longest first)."""
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    return text


def command(name: str, replacements: Mapping[str, str]) -> list[str]:
    """The shell block ``name`` as one argv (continuation lines joined), localized."""
    text = localize(block(name), replacements).replace("\\\n", " ")
    return shlex.split(text)
