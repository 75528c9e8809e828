"""Fenced code blocks of the Markdown documentation, as the doc tests see them.

Every fence must name its language (```sh, ```text, ```python, ```console, ...): a shell
example cannot slip past the tests by carrying no label. Blocks labelled ``sh``, ``bash`` or
``shell`` are run; all others are shown, not run (``console`` is for transcripts with their
output). A shell block that cannot run here says so in an HTML comment right before it
(blank lines between are fine), which the tests report as a skip with the reason::

    <!-- doc-test: skip (needs a VM image of your own) -->
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

__all__ = ["SHELL", "Block", "DocError", "parse_blocks"]

SHELL = frozenset({"sh", "bash", "shell"})
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:(?P<body>.*?)-->\s*$")
_SKIP = re.compile(r"^\s*skip\s*\((?P<reason>.+)\)\s*$")


class DocError(ValueError):
    """A page the doc tests cannot read as intended: an unlabelled fence, an unclosed one,
    a directive they do not know."""


@attrs.frozen
class Block:
    """One fenced block: where it starts (1-based line of the opening fence), its language,
    its text, and the reason it is not run (None: it is run if it is a shell block)."""

    page: Path
    line: int
    language: str
    text: str
    skip: str | None = None

    @property
    def runs(self) -> bool:
        return self.language in SHELL and self.skip is None

    def where(self, root: Path) -> str:
        return f"{self.page.relative_to(root)}:{self.line}"


def parse_blocks(page: Path) -> list[Block]:
    """The page's fenced blocks, in order, with their skip directives."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending_skip: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        if directive:
            skip = _SKIP.match(directive.group("body"))
            if skip is None:
                raise DocError(
                    f"{page}:{i + 1}: unknown doc-test directive {line.strip()!r} "
                    "(known: <!-- doc-test: skip (reason) -->)"
                )
            pending_skip = skip.group("reason").strip()
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip() and pending_skip is not None:
                raise DocError(f"{page}:{i + 1}: a doc-test skip must come right before its block")
            i += 1
            continue
        language = fence.group("info").strip().split(" ", 1)[0]
        if not language:
            raise DocError(
                f"{page}:{i + 1}: a fenced block without a language: label it "
                "(```sh is run by the tests, ```text or ```console is not)"
            )
        marks, indent = fence.group("fence"), len(fence.group("indent"))
        closing = re.compile(rf"^\s*{re.escape(marks[0])}{{{len(marks)},}}\s*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            body.append(lines[j][indent:])
            j += 1
        if j == len(lines):
            raise DocError(f"{page}:{i + 1}: the fenced block is never closed")
        if pending_skip is not None and language not in SHELL:
            raise DocError(f"{page}:{i + 1}: a doc-test skip before a {language} block")
        blocks.append(Block(page, i + 1, language, "\n".join(body) + "\n", pending_skip))
        pending_skip = None
        i = j + 1
    if pending_skip is not None:
        raise DocError(f"{page}: a doc-test directive with no block after it")
    return blocks
