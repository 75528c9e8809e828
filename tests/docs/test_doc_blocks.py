"""The rules the doc tests read pages by (doc_blocks.py), on small pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.doc_blocks import DocError, parse_blocks


def page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def test_blocks_languages_and_skips(tmp_path: Path) -> None:
    blocks = parse_blocks(
        page(
            tmp_path,
            "# t\n\n```sh\necho one\n```\n\n<!-- doc-test: skip (needs a VM) -->\n\n"
            "```bash\nqemu ...\n```\n\n```text\nout\n```\n\n  ```sh\n  cd /x\n  ```\n",
        )
    )
    assert [(b.line, b.language, b.skip, b.runs) for b in blocks] == [
        (3, "sh", None, True),
        (9, "bash", "needs a VM", False),
        (13, "text", None, False),
        (17, "sh", None, True),
    ]
    assert blocks[0].text == "echo one\n"
    assert blocks[3].text == "cd /x\n"  # the list item's indentation is removed


def test_a_skip_applies_to_the_next_block_only(tmp_path: Path) -> None:
    text = "<!-- doc-test: skip (x) -->\n```sh\na\n```\n```sh\nb\n```\n"
    assert [b.skip for b in parse_blocks(page(tmp_path, text))] == ["x", None]


def test_longer_fences_hold_shorter_ones(tmp_path: Path) -> None:
    text = "````text\n```sh\nnot a block\n```\n````\n"
    [block] = parse_blocks(page(tmp_path, text))
    assert block.language == "text" and "not a block" in block.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("```\nls\n```\n", "without a language"),
        ("```sh\nls\n", "never closed"),
        ("<!-- doc-test: skip -->\n```sh\nls\n```\n", "unknown doc-test directive"),
        ("<!-- doc-test: run (x) -->\n```sh\nls\n```\n", "unknown doc-test directive"),
        ("<!-- doc-test: skip (x) -->\n```text\nls\n```\n", "skip before a text block"),
        ("text\n<!-- doc-test: skip (x) -->\n", "no block after it"),
        ("<!-- doc-test: skip (x) -->\nprose\n```sh\nls\n```\n", "right before its block"),
    ],
)
def test_what_a_page_may_not_do(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DocError, match=message):
        parse_blocks(page(tmp_path, text))
