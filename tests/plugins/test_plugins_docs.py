"""docs/hooks.md documents every hook with its exact signature (datasette's test_docs idea)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

from fsd import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _signature(fn: Callable[..., object]) -> str:
    """``(name: Type, ...) -> Return`` as written in hookspecs.py (annotations are strings)."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"({params}) -> {sig.return_annotation}"


def _hookspecs() -> dict[str, Callable[..., object]]:
    return {
        name: fn for name, fn in vars(hookspecs).items() if name.startswith("fsd_") and callable(fn)
    }


def _sections() -> dict[str, tuple[str, str]]:
    """Each ``### fsd_hook(...) -> ...`` heading of hooks.md: (signature, text up to the next
    heading)."""
    parts = re.split(r"^#{2,3} ", (DOCS / "hooks.md").read_text(), flags=re.M)
    sections: dict[str, tuple[str, str]] = {}
    for part in parts:
        heading, _, text = part.partition("\n")
        match = re.fullmatch(r"(fsd_\w+)(\(.*\) -> .+?)\s*", heading)
        if match:
            assert match[1] not in sections, f"{match[1]} is documented twice"
            sections[match[1]] = (match[2], text)
    return sections


def test_every_hook_has_a_heading_with_its_exact_signature() -> None:
    documented = {name: signature for name, (signature, _) in _sections().items()}
    assert documented == {name: _signature(fn) for name, fn in _hookspecs().items()}


def test_each_section_states_the_calling_convention_the_spec_declares() -> None:
    sections = _sections()
    for name, fn in _hookspecs().items():
        opts = getattr(fn, f"{hookspecs.PROJECT}_spec")
        text = sections[name][1]
        assert ("**firstresult**" in text) == bool(opts.get("firstresult")), name
        assert ("Historic" in text) == bool(opts.get("historic")), name


def test_hookspec_docstrings_are_short_and_point_at_the_reference() -> None:
    """One copy of each contract: the rules live in docs/hooks.md, not in the docstrings."""
    for name, fn in _hookspecs().items():
        doc = inspect.getdoc(fn) or ""
        assert "docs/hooks.md" in doc, name
        assert len(doc.splitlines()) <= 2, name


def test_plugin_guide_mentions_every_hook() -> None:
    guide = (DOCS / "plugins.md").read_text()
    missing = [name for name in _hookspecs() if name not in guide]
    assert not missing


def test_example_plugin_and_its_test_run(tmp_path: Path) -> None:
    """The example in docs/plugins/example-plugin.md works as printed."""
    import sys
    import types

    blocks = re.findall(
        r"```python\n(.*?)```", (DOCS / "plugins" / "example-plugin.md").read_text(), re.S
    )
    module = types.ModuleType("fsd_hide_dotfiles")
    exec(compile(blocks[0], "example-plugin.md", "exec"), module.__dict__)
    sys.modules["fsd_hide_dotfiles"] = module
    try:
        test_ns: dict[str, object] = {}
        exec(compile(blocks[1], "example-plugin.md", "exec"), test_ns)
        run = test_ns["test_dotfiles_are_hidden_from_other_uids"]
        assert callable(run)
        run(tmp_path)
    finally:
        del sys.modules["fsd_hide_dotfiles"]
