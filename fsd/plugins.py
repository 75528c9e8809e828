"""The plugin manager: load only the plugins asked for, and call their hooks safely and cheaply.

Plugins are a security boundary (they decide what a guest may do), so nothing loads by
itself: each ``--plugin NAME`` names an entry point in the ``fsd`` group, or a
``package.module:object`` path. :class:`Plugins` is the typed facade the daemon calls. It
resolves each hook's implementations once (on register/unregister) and calls them itself,
one by one, instead of through pluggy's generic call:

* an unimplemented hook costs one attribute test (``if plugins.has_fuse_check``), not the
  ~1.5 µs of a pluggy call;
* each implementation is isolated: a check that raises or returns garbage denies and is
  logged with its plugin's name; an audit that raises is logged and the other audits run;
* the first denial wins and stops the remaining checks, as ``firstresult`` says.

Hook wrappers (``wrapper=True``/``hookwrapper=True``) cannot span this, so they are refused
for the FUSE and allowlist hooks.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.metadata
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import pluggy
import trio

from fsd import hookspecs
from fsd.plugin_options import OptionError, OptionRegistry, PluginConfig, parse_plugin_cfg

if TYPE_CHECKING:
    from fsd.allowlist.handler import AllowlistChange
    from fsd.allowlist.protocol import Response
    from fsd.hookinfo import DaemonInfo, FuseRequestInfo, VmmInfo

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "Plugins",
    "add_plugin_arguments",
    "create_manager",
    "list_plugins_main",
    "load_plugins",
    "setup_plugins",
]

log = logging.getLogger("fsd.plugins")

ENTRY_POINT_GROUP: Final = "fsd"
#: Errno a check hook's failure (exception, wrong type, coroutine) denies with.
PLUGIN_ERROR_ERRNO: Final = errno.EACCES
#: How long an awaitable returned by a lifecycle hook may run.
LIFECYCLE_TIMEOUT: Final = 5.0

# (plugin name, function, argument names the implementation takes, takes all of them)
_Impl = tuple[str, Callable[..., Any], tuple[str, ...], bool]

_NO_WRAPPERS: Final = ("fsd_fuse_check", "fsd_fuse_audit", "fsd_allowlist_check",
                       "fsd_allowlist_audit")  # fmt: skip


class PluginError(Exception):
    """A plugin cannot be found, imported, validated or configured; startup must stop."""


def create_manager() -> pluggy.PluginManager:
    """A pluggy manager that knows fsd's hook specifications and nothing else."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


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
                    f"unknown plugin {name!r}: no entry point {name!r} in group "
                    f"{ENTRY_POINT_GROUP!r} (installed: {known})"
                )
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"cannot load plugin {name!r}: {exc!r}") from exc
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


class Plugins:
    """Typed facade over a plugin manager; the daemon calls hooks only through this.

    ``has_fuse_hooks`` and friends are plain attributes, recomputed by :meth:`refresh`
    (``register``/``unregister`` call it), so the hot path tests them for free.
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else create_manager()
        self.config = PluginConfig()
        self.options = OptionRegistry()
        self.refresh()

    # --- registration ----------------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register ``plugin`` (a module or object with hookimpls); return its name."""
        try:
            registered = self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(str(exc)) from exc
        if registered is None:
            raise PluginError(f"plugin {name!r} is blocked")
        self.refresh()
        return registered

    def unregister(self, name: str) -> None:
        """Remove a plugin by name; its hooks stop being called at once."""
        self.pm.unregister(name=name)
        self.refresh()

    def names(self) -> list[str]:
        """Names of the registered plugins."""
        return [name for name, _ in self.pm.list_name_plugin()]

    def refresh(self) -> None:
        """Resolve every per-request hook's implementations, in pluggy's call order."""
        self._fuse_check = self._impls("fsd_fuse_check")
        self._fuse_audit = self._impls("fsd_fuse_audit")
        self._allowlist_check = self._impls("fsd_allowlist_check")
        self._allowlist_audit = self._impls("fsd_allowlist_audit")
        self.has_fuse_check = bool(self._fuse_check)
        self.has_fuse_audit = bool(self._fuse_audit)
        self.has_fuse_hooks = self.has_fuse_check or self.has_fuse_audit
        self.has_allowlist_hooks = bool(self._allowlist_check or self._allowlist_audit)

    def _impls(self, hook: str) -> tuple[_Impl, ...]:
        caller = getattr(self.pm.hook, hook)
        spec_args = tuple(caller.spec.argnames) if caller.spec else ()
        out: list[_Impl] = []
        # pluggy calls the last registered (and tryfirst) implementation first.
        for impl in reversed(caller.get_hookimpls()):
            if hook in _NO_WRAPPERS and (impl.wrapper or impl.hookwrapper):
                raise PluginError(f"plugin {impl.plugin_name!r}: {hook} cannot be a wrapper")
            args = tuple(impl.argnames)
            out.append((impl.plugin_name, impl.function, args, args == spec_args))
        return tuple(out)

    # --- configuration ---------------------------------------------------------------------

    def collect_options(self) -> OptionRegistry:
        """Ask every plugin to declare its options (``fsd_addoption``)."""
        self.options = OptionRegistry()
        self.pm.hook.fsd_addoption.call_historic(kwargs={"options": self.options})
        return self.options

    def configure(self, given: Mapping[str, Mapping[str, str]] | None = None) -> PluginConfig:
        """Collect declared options, check ``given`` against them, and configure every plugin.

        Raises :class:`PluginError` on an undeclared option or a plugin refusing its values.
        """
        try:
            self.collect_options()
            self.config = self.options.resolve(given or {})
            self.pm.hook.fsd_configure.call_historic(kwargs={"config": self.config})
        except OptionError as exc:
            raise PluginError(str(exc)) from exc
        except Exception as exc:
            raise PluginError(f"plugin configuration failed: {exc}") from exc
        return self.config

    # --- FUSE (hot path) ---------------------------------------------------------------------

    def fuse_check(self, request: FuseRequestInfo) -> int | None:
        """The first denial's errno, or None when every plugin abstains. Never raises."""
        for name, fn, args, full in self._fuse_check:
            try:
                result = fn(request) if full else fn(*_pick(args, request=request))
            except Exception:
                log.exception(
                    "plugin %r: fsd_fuse_check raised on %s %s; denying",
                    name, request.op, request.entry_path,
                )  # fmt: skip
                return PLUGIN_ERROR_ERRNO
            if result is None:
                continue
            if isinstance(result, int) and not isinstance(result, bool) and 0 < result < 4096:
                return result
            _complain(name, "fsd_fuse_check", result, f"{request.op} {request.entry_path}")
            return PLUGIN_ERROR_ERRNO
        return None

    def fuse_audit(self, request: FuseRequestInfo, error: int, bytes_moved: int) -> None:
        """Tell every audit implementation the outcome. Never raises."""
        for name, fn, args, full in self._fuse_audit:
            try:
                if full:
                    result = fn(request, error, bytes_moved)
                else:
                    result = fn(*_pick(args, request=request, error=error, bytes_moved=bytes_moved))
            except Exception:
                log.exception("plugin %r: fsd_fuse_audit raised on %s", name, request.op)
                continue
            if result is not None:
                _complain(name, "fsd_fuse_audit", result, request.op)

    # --- allowlist -----------------------------------------------------------------------

    def allowlist_check(self, change: AllowlistChange) -> str | None:
        """The first refusal's reason, or None. Raises on a plugin failure, so that
        :func:`fsd.allowlist.handler.handle_packet` (which fails closed) refuses and logs."""
        for name, fn, args, full in self._allowlist_check:
            result = fn(change) if full else fn(*_pick(args, change=change))
            if result is None:
                continue
            if isinstance(result, str):
                return result or f"refused by plugin {name!r}"
            _close(result)
            raise TypeError(f"plugin {name!r}: fsd_allowlist_check returned {result!r}")
        return None

    def allowlist_audit(self, change: AllowlistChange, response: Response) -> None:
        """Tell every allowlist audit implementation about a change. Never raises."""
        for name, fn, args, full in self._allowlist_audit:
            try:
                result = (
                    fn(change, response)
                    if full
                    else fn(*_pick(args, change=change, response=response))
                )
            except Exception:
                log.exception("plugin %r: fsd_allowlist_audit raised", name)
                continue
            if result is not None:
                _complain(name, "fsd_allowlist_audit", result, change.op)

    def allowlist_callbacks(
        self,
    ) -> tuple[
        Callable[[AllowlistChange], str | None] | None,
        Callable[[AllowlistChange, Response], None] | None,
    ]:
        """``(check, after)`` for ``serve_allowlist``; None where no plugin implements it."""
        return (
            self.allowlist_check if self._allowlist_check else None,
            self.allowlist_audit if self._allowlist_audit else None,
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def daemon_started(self, daemon: DaemonInfo) -> None:
        """Call ``fsd_daemon_started``; await what implementations return."""
        await self._lifecycle("fsd_daemon_started", daemon=daemon)

    async def vmm_connected(self, vmm: VmmInfo) -> None:
        """Call ``fsd_vmm_connected``."""
        await self._lifecycle("fsd_vmm_connected", vmm=vmm)

    async def vmm_disconnected(self, vmm: VmmInfo) -> None:
        """Call ``fsd_vmm_disconnected``."""
        await self._lifecycle("fsd_vmm_disconnected", vmm=vmm)

    async def daemon_stopping(self, reason: str) -> None:
        """Call ``fsd_daemon_stopping``; shielded, so it runs during cancellation too."""
        await self._lifecycle("fsd_daemon_stopping", reason=reason)

    def reload(self) -> None:
        """Call ``fsd_reload`` (SIGHUP). Never raises."""
        for name, fn, args, _ in self._impls("fsd_reload"):
            try:
                result = fn(*_pick(args))
            except Exception:
                log.exception("plugin %r: fsd_reload raised", name)
                continue
            _close(result)

    async def _lifecycle(self, hook: str, **kwargs: Any) -> None:
        """Call each implementation in turn and await what it returns, to completion but at
        most :data:`LIFECYCLE_TIMEOUT` (shielded from the daemon's cancellation): the daemon
        waits meanwhile, so a hook returning a never-ending task delays it and is cancelled."""
        for name, fn, args, _ in self._impls(hook):
            try:
                result = fn(*_pick(args, **kwargs))
                if inspect.isawaitable(result):
                    with trio.move_on_after(LIFECYCLE_TIMEOUT) as scope:
                        scope.shield = True
                        await result
                    if scope.cancelled_caught:
                        log.warning("plugin %r: %s did not finish within %s s and was cancelled "
                                    "(lifecycle hooks are awaited to completion; run long work "
                                    "on your own thread)", name, hook,
                                    LIFECYCLE_TIMEOUT)  # fmt: skip
            except Exception:
                log.exception("plugin %r: %s raised", name, hook)


def _pick(argnames: tuple[str, ...], **kwargs: Any) -> list[Any]:
    """The arguments an implementation asked for (pluggy's opt-in arguments)."""
    return [kwargs[a] for a in argnames]


def _close(result: object) -> None:
    """Close a coroutine nobody will await, so Python does not warn about it."""
    close = getattr(result, "close", None)
    if inspect.iscoroutine(result) and close is not None:
        close()


def _complain(name: str, hook: str, result: object, what: object) -> None:
    if inspect.isawaitable(result):
        _close(result)
        log.error("plugin %r: %s returned an awaitable on %s: it must be a plain function "
                  "(hand async work to your own task or thread)", name, hook, what)  # fmt: skip
    else:
        log.error("plugin %r: %s returned %r on %s; treating it as a plugin error",
                  name, hook, result, what)  # fmt: skip


# --- command line ----------------------------------------------------------------------------


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--plugin`` and ``--plugin-cfg`` (both repeatable) to a command's parser."""
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="load this plugin: an entry point of group 'fsd' or a module:object path",
    )
    parser.add_argument(
        "--plugin-cfg",
        action="append",
        default=[],
        metavar="NAME:K=V[,K=V...]",
        help="options for a loaded plugin (see `fsd plugins --plugin NAME`)",
    )


def setup_plugins(names: Sequence[str], cfg: Sequence[str] = ()) -> Plugins:
    """Load and configure the named plugins: what ``fsd serve``/``fsd mount`` do at startup."""
    pm = create_manager()
    load_plugins(pm, names)
    plugins = Plugins(pm)
    try:
        given = parse_plugin_cfg(cfg)
    except OptionError as exc:
        raise PluginError(str(exc)) from exc
    plugins.configure(given)
    return plugins


def list_plugins_main(argv: Sequence[str]) -> int:
    """``fsd plugins [--plugin NAME ...]``: what is installed, and what the named ones hook."""
    parser = argparse.ArgumentParser(
        prog="fsd plugins",
        description="List installed fsd plugins (entry-point group 'fsd'); with --plugin, "
        "load those and show their hooks and options.",
    )
    parser.add_argument("--plugin", action="append", default=[], metavar="NAME")
    args = parser.parse_args(list(argv))
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
