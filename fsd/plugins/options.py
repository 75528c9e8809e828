"""Plugins' own options: ``--plugin-cfg NAME:key=value,key=value`` on the command line.

A plugin declares its keys in ``fsd_addoption`` under a namespace (by convention its
entry-point name), and reads the values in ``fsd_configure``. Everything is a string; the
plugin converts and validates, and raises ``ValueError`` to stop the daemon from starting with
a bad configuration. Values cannot contain commas (as in crosvm's ``--cfg``): put anything
richer in a file and pass its path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

__all__ = ["OptionError", "OptionRegistry", "PluginConfig", "parse_plugin_cfg"]


class OptionError(ValueError):
    """A ``--plugin-cfg`` argument is malformed or names an undeclared option."""


def parse_plugin_cfg(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """Parse ``NAME:key=value,...`` arguments (repeatable; later keys win) into nested dicts."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        namespace, sep, rest = item.partition(":")
        namespace = namespace.strip()
        if not sep or not namespace:
            raise OptionError(f"--plugin-cfg {item!r}: expected NAME:key=value[,key=value...]")
        values = out.setdefault(namespace, {})
        for pair in rest.split(","):
            if not pair.strip():
                continue
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise OptionError(f"--plugin-cfg {item!r}: {pair!r} is not key=value")
            values[key.strip()] = value.strip()
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class OptionSpec:
    """One declared key: its help text and the value used when it is not given."""

    help: str
    default: str | None = None


class OptionRegistry:
    """What ``fsd_addoption`` receives: declare ``namespace:key`` options with help texts."""

    def __init__(self) -> None:
        self.specs: dict[str, dict[str, OptionSpec]] = {}

    def add(self, namespace: str, key: str, help: str, default: str | None = None) -> None:
        """Declare ``--plugin-cfg namespace:key=...``; declaring a key twice is an error."""
        keys = self.specs.setdefault(namespace, {})
        if key in keys:
            raise OptionError(f"plugin option {namespace}:{key} declared twice")
        keys[key] = OptionSpec(help, default)

    def resolve(self, given: Mapping[str, Mapping[str, str]]) -> PluginConfig:
        """Check ``given`` against the declarations and fill in defaults."""
        values: dict[str, dict[str, str]] = {}
        for namespace, keys in self.specs.items():
            values[namespace] = {k: s.default for k, s in keys.items() if s.default is not None}
        for namespace, pairs in given.items():
            declared = self.specs.get(namespace)
            if declared is None:
                known = ", ".join(sorted(self.specs)) or "none"
                raise OptionError(
                    f"--plugin-cfg {namespace}: no loaded plugin declares options under "
                    f"{namespace!r} (declared: {known})"
                )
            for key, value in pairs.items():
                if key not in declared:
                    raise OptionError(
                        f"--plugin-cfg {namespace}:{key}: unknown key "
                        f"(known: {', '.join(sorted(declared))})"
                    )
                values[namespace][key] = value
        return PluginConfig(values)

    def describe(self) -> list[str]:
        """Help lines, one per declared key, for ``fsd plugins``."""
        lines = []
        for namespace, keys in sorted(self.specs.items()):
            for key, spec in keys.items():
                default = f" (default {spec.default})" if spec.default is not None else ""
                lines.append(f"  --plugin-cfg {namespace}:{key}=...  {spec.help}{default}")
        return lines


class PluginConfig:
    """What ``fsd_configure`` receives: the resolved option values per namespace."""

    def __init__(self, values: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._values = {ns: dict(kv) for ns, kv in (values or {}).items()}

    def options(self, namespace: str) -> dict[str, str]:
        """The values (given or default) of ``namespace``'s keys; a copy, empty if none."""
        return dict(self._values.get(namespace, {}))
