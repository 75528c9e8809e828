"""Find, import and validate the plugins named at start-up; nothing loads by itself.

Plugins are a security boundary (they decide what a guest may do), so each ``--plugin NAME``
names an entry point in the ``fsd`` group, or a ``package.module:object`` path, and only those
are registered. :func:`setup_plugins` is what ``fsd serve`` and ``fsd mount`` do with their
``--plugin``/``--plugin-cfg`` arguments.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Iterable, Sequence
from typing import Final

import pluggy

from fsd.plugins.caller import PluginError, Plugins, create_manager
from fsd.plugins.options import OptionError, parse_plugin_cfg

__all__ = ["ENTRY_POINT_GROUP", "installed_entry_points", "load_plugins", "setup_plugins"]

log = logging.getLogger("fsd.plugins")

ENTRY_POINT_GROUP: Final = "fsd"


def installed_entry_points() -> list[importlib.metadata.EntryPoint]:
    """Every entry point in the ``fsd`` group, sorted by name (nothing is imported)."""
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def _load_object(path: str) -> object:
    """Import ``package.module:attr.attr`` and return the object."""
    module_name, _, attrs = path.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in filter(None, attrs.split(".")):
        obj = getattr(obj, part)
    return obj


def load_plugins(pm: pluggy.PluginManager, names: Iterable[str]) -> None:
    """Register the named plugins (entry-point names or ``module:object`` paths), nothing else.

    Raises :class:`PluginError` for an unknown name, an import error, an implementation that
    does not match a hook specification (misspelled hook, unknown argument), or a
    ``module:object`` path naming an object with no ``@hookimpl`` at all: a typo there
    (``--plugin os:path``) would otherwise load a policy that enforces nothing, silently. An
    entry point with no hooks is only warned about: its package chose to publish it.
    """
    for name in names:
        if pm.has_plugin(name):
            continue
        try:
            if ":" in name:
                pm.register(_load_object(name), name=name)
            elif not pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name):
                known = ", ".join(e.name for e in installed_entry_points()) or "none"
                raise PluginError(
                    f"--plugin {name}: unknown plugin {name!r}, no entry point of that name in "
                    f"group {ENTRY_POINT_GROUP!r} (installed: {known})"
                )
        except PluginError:
            raise
        except Exception as exc:
            what = "import" if isinstance(exc, ImportError) else "load"
            raise PluginError(
                f"--plugin {name}: cannot {what} it ({type(exc).__name__}: {exc}); check the "
                "name (`fsd plugins` lists the installed ones)"
            ) from exc
        if not pm.get_hookcallers(pm.get_plugin(name)):
            what = f"plugin {name!r} implements no fsd hook (none marked with @hookimpl)"
            if ":" in name:
                pm.unregister(name=name)
                raise PluginError(f"{what}: is the path right?")
            log.warning("%s; it will do nothing", what)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from exc


def setup_plugins(names: Sequence[str], cfg: Sequence[str] = ()) -> Plugins:
    """Load and configure the named plugins: what ``fsd serve``/``fsd mount`` do at start-up.

    ``cfg`` are ``--plugin-cfg NAME:key=value,...`` texts. Raises :class:`PluginError`."""
    pm = create_manager()
    load_plugins(pm, names)
    plugins = Plugins(pm)
    try:
        given = parse_plugin_cfg(cfg)
    except OptionError as exc:
        raise PluginError(str(exc)) from exc
    plugins.configure(given)
    return plugins
