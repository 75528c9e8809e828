"""Old import path of the plugin option types, kept for plugins that annotate with it.

New code: ``from fsd.plugins import OptionRegistry, PluginConfig`` (:mod:`fsd.plugins.options`).
"""

from fsd.plugins.options import OptionError, OptionRegistry, PluginConfig, parse_plugin_cfg

__all__ = ["OptionError", "OptionRegistry", "PluginConfig", "parse_plugin_cfg"]
