"""docs/hooks.md documents every hook with its exact signature (datasette's test_docs idea)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from fsd import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _hookspecs() -> dict[str, str]:
    return {
        name: ", ".join(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if name.startswith("fsd_") and callable(fn)
    }


def test_every_hook_has_a_heading_with_its_exact_signature() -> None:
    headings = re.findall(r"^### (fsd_\w+)\((.*)\)\s*$", (DOCS / "hooks.md").read_text(), re.M)
    documented = dict(headings)
    assert len(documented) == len(headings), "a hook is documented twice"
    assert documented == _hookspecs()


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
