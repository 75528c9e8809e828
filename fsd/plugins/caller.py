"""The daemon's one way to call plugin hooks: :class:`Plugins`, cheap and failure-isolated.

:class:`Plugins` is the typed facade over a pluggy manager that knows fsd's hook
specifications. It resolves each hook's implementations once (on register/unregister) and
calls them itself, one by one, instead of through pluggy's generic call:

* an unimplemented hook costs one attribute test (``if plugins.has_fuse_check``), not the
  ~1.5 µs of a pluggy call;
* each implementation is isolated: a check that raises or returns garbage denies and is
  logged with its plugin's name; an audit that raises is logged and the other audits run;
* the order is pluggy's (tryfirst, then the last registered first, then trylast) and the
  first denial wins and stops the remaining checks, as ``firstresult`` says
  (tests/plugins/test_plugins_call_order.py compares both).

Hook wrappers (``wrapper=True``/``hookwrapper=True``) cannot span this, so they are refused
for the FUSE and allowlist hooks. Finding and importing plugins is :mod:`fsd.plugins.loader`.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import pluggy
import trio

from fsd import hookspecs
from fsd.plugins.options import OptionError, OptionRegistry, PluginConfig

if TYPE_CHECKING:
    from fsd.allowlist.handler import AllowlistChange
    from fsd.allowlist.protocol import Response
    from fsd.hookinfo import DaemonInfo, FuseRequestInfo, VmmInfo
    from fsd.sandbox import HostPath

__all__ = [
    "LIFECYCLE_TIMEOUT",
    "PLUGIN_ERROR_ERRNO",
    "PluginError",
    "Plugins",
    "create_manager",
]

log = logging.getLogger("fsd.plugins")

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

    def sandbox_paths(self) -> list[tuple[str, HostPath]]:
        """``(plugin name, path)`` for every host path a plugin declared it opens after
        start-up (``fsd_sandbox_paths``, after :meth:`configure`). Raises
        :class:`PluginError` for an answer that is not a list of absolute ``HostPath``."""
        from fsd.sandbox import HostPath

        out: list[tuple[str, HostPath]] = []
        for name, fn, args, _ in self._impls("fsd_sandbox_paths"):
            try:
                result = fn(*_pick(args))
            except Exception as exc:
                raise PluginError(f"plugin {name!r}: fsd_sandbox_paths raised {exc!r}") from exc
            if result is None:
                continue
            _close(result)
            if isinstance(result, (str, bytes)) or not isinstance(result, (list, tuple)):
                raise PluginError(
                    f"plugin {name!r}: fsd_sandbox_paths returned {result!r}, not a list of "
                    "fsd.sandbox.HostPath"
                )
            for path in result:
                if not isinstance(path, HostPath) or not os.path.isabs(path.path):
                    raise PluginError(
                        f"plugin {name!r}: fsd_sandbox_paths gave {path!r}, not an "
                        "fsd.sandbox.HostPath with an absolute path"
                    )
                out.append((name, path))
        return out

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
