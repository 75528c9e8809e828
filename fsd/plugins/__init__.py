"""fsd's plugins: load only those asked for, and call their hooks safely and cheaply.

:mod:`fsd.plugins.loader` finds and imports them (``--plugin``), :mod:`fsd.plugins.options`
holds their own options (``--plugin-cfg``), and :class:`Plugins` (:mod:`fsd.plugins.caller`)
is the typed facade the daemon calls hooks through. The hook specifications a plugin
implements are in :mod:`fsd.hookspecs` (``from fsd.hookspecs import hookimpl``); the
``fsd plugins`` command is :mod:`fsd.cli.plugins`.
"""

from fsd.plugins.caller import (
    LIFECYCLE_TIMEOUT,
    PLUGIN_ERROR_ERRNO,
    PluginError,
    Plugins,
    create_manager,
)
from fsd.plugins.loader import (
    ENTRY_POINT_GROUP,
    installed_entry_points,
    load_plugins,
    setup_plugins,
)
from fsd.plugins.options import OptionError, OptionRegistry, PluginConfig, parse_plugin_cfg

__all__ = [
    "ENTRY_POINT_GROUP",
    "LIFECYCLE_TIMEOUT",
    "PLUGIN_ERROR_ERRNO",
    "OptionError",
    "OptionRegistry",
    "PluginConfig",
    "PluginError",
    "Plugins",
    "create_manager",
    "installed_entry_points",
    "load_plugins",
    "parse_plugin_cfg",
    "setup_plugins",
]
