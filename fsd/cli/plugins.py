"""``fsd plugins [--plugin NAME ...]``: what is installed, and what the named ones hook."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fsd.plugins import (
    OptionError,
    PluginError,
    Plugins,
    create_manager,
    installed_entry_points,
    load_plugins,
)

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """``fsd plugins``'s options."""
    p = argparse.ArgumentParser(
        prog="fsd plugins",
        description="List installed fsd plugins (entry-point group 'fsd'); with --plugin, "
        "load those and show their hooks and options.",
    )
    p.add_argument(
        "--plugin", action="append", default=[], metavar="NAME", help="load and describe NAME"
    )
    return p


def main(argv: Sequence[str]) -> int:
    """List the entry points of group ``fsd``; with ``--plugin``, load those (without
    configuring them) and show their hooks and declared options. Exits 1 if one cannot load."""
    args = parser().parse_args(list(argv))
    out = sys.stdout
    eps = installed_entry_points()
    out.write("installed plugins (entry-point group 'fsd'):\n")
    for ep in eps:
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        out.write(f"  {ep.name:<20} {ep.value:<40} ({dist})\n")
    if not eps:
        out.write("  (none)\n")
    if not args.plugin:
        return 0
    try:
        pm = create_manager()
        load_plugins(pm, args.plugin)
        plugins = Plugins(pm)
        plugins.collect_options()  # not configured: listing must not need their options
    except (PluginError, OptionError) as exc:
        print(f"fsd plugins: {exc}", file=sys.stderr)
        return 1
    out.write("\nloaded:\n")
    for name, plugin in plugins.pm.list_name_plugin():
        callers = plugins.pm.get_hookcallers(plugin) or []
        hooks = ", ".join(sorted(c.name for c in callers)) or "(no hooks)"
        out.write(f"  {name}: {hooks}\n")
    lines = plugins.options.describe()
    if lines:
        out.write("\noptions:\n" + "\n".join(lines) + "\n")
    return 0
