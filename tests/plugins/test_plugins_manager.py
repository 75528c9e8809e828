"""The plugin manager: loading by name only, options, and fail-closed hook calls."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from fsd import hookspecs
from fsd.allowlist.handler import AllowlistChange, handle_packet
from fsd.allowlist.protocol import Err, Ok, Response
from fsd.allowlist.trie import Allowlist
from fsd.hookinfo import DaemonInfo, FuseRequestInfo, VmmInfo
from fsd.hookspecs import hookimpl
from fsd.plugins import (
    OptionError,
    PluginConfig,
    PluginError,
    Plugins,
    create_manager,
    load_plugins,
    parse_plugin_cfg,
    setup_plugins,
)
from fsd.testing.plugins import Recorder, plugin_manager


def info(name: str | None = "x", **kw: Any) -> FuseRequestInfo:
    base: dict[str, Any] = {"op": "LOOKUP", "opcode": 1, "unique": 2, "nodeid": 1, "path": "/"}
    ids: dict[str, Any] = {"uid": 0, "gid": 0, "pid": 0, "transport": "vhost-user"}
    return FuseRequestInfo(**base, **ids, op_class="metadata", writes=False, **{"name": name, **kw})


class Deny:
    def __init__(self, code: object) -> None:
        self.code = code
        self.calls = 0

    @hookimpl
    def fsd_fuse_check(self, request: FuseRequestInfo) -> object:
        self.calls += 1
        return self.code


# --- loading ----------------------------------------------------------------------------------


def test_entry_point_plugins_load_only_when_named() -> None:
    pm = create_manager()
    load_plugins(pm, [])
    assert pm.get_plugins() == set()
    load_plugins(pm, ["audit-log"])
    assert [name for name, _ in pm.list_name_plugin()] == ["audit-log"]


def test_unknown_plugin_name_is_a_clear_error() -> None:
    with pytest.raises(PluginError, match=r"unknown plugin 'nope'.*installed: .*audit-log"):
        load_plugins(create_manager(), ["nope"])


def test_module_path_plugin() -> None:
    plugins = setup_plugins(["sample_plugin:"])
    assert plugins.has_fuse_check and not plugins.has_fuse_audit
    assert plugins.fuse_check(info("forbidden")) == errno.EACCES
    assert plugins.fuse_check(info("fine")) is None


def test_import_error_and_misspelled_hook_are_refused() -> None:
    refused = "--plugin no_such_module:x: cannot import it .ModuleNotFoundError"
    with pytest.raises(PluginError, match=refused):
        load_plugins(create_manager(), ["no_such_module:x"])
    with pytest.raises(PluginError, match="fsd_fuse_chek"):
        load_plugins(create_manager(), ["sample_plugin:misspelled"])


def test_module_path_without_hooks_is_refused() -> None:
    """A typo in a security boundary must not pass silently: ``os:path`` enforces nothing."""
    pm = create_manager()
    with pytest.raises(PluginError, match=r"plugin 'os:path' implements no fsd hook.*path right"):
        load_plugins(pm, ["os:path"])
    assert pm.get_plugins() == set()
    with pytest.raises(PluginError, match="implements no fsd hook"):
        setup_plugins(["fsd.hookspecs:"])  # specifications are not implementations


def test_entry_point_without_hooks_loads_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """An installed distribution published it on purpose: warn, do not refuse."""
    dist = tmp_path / "fsd_empty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fsd-empty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fsd]\nempty = os:path\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = create_manager()
    with caplog.at_level(logging.WARNING, logger="fsd.plugins"):
        load_plugins(pm, ["empty"])
    assert pm.has_plugin("empty")
    assert "plugin 'empty' implements no fsd hook" in caplog.text


def test_wrappers_are_refused_for_per_request_hooks() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def fsd_fuse_audit(self, request: FuseRequestInfo) -> Any:
            return (yield)

    with pytest.raises(PluginError, match="cannot be a wrapper"):
        Plugins().register(Wrapper())


def test_hookspecs_use_the_fsd_project_and_prefix() -> None:
    pm = create_manager()
    names = [n for n in dir(pm.hook) if not n.startswith("_")]
    assert names and all(n.startswith("fsd_") for n in names)
    assert hookspecs.hookimpl.project_name == "fsd"
    for hook in (pm.hook.fsd_fuse_check, pm.hook.fsd_allowlist_check):
        assert hook.spec is not None and hook.spec.opts["firstresult"]


# --- options ----------------------------------------------------------------------------------


def test_parse_plugin_cfg() -> None:
    assert parse_plugin_cfg(["a:x=1,y=2", "a:y=3", "b:"]) == {"a": {"x": "1", "y": "3"}, "b": {}}
    for bad in ["nocolon", ":x=1", "a:x"]:
        with pytest.raises(OptionError):
            parse_plugin_cfg([bad])


class WithOptions:
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    @hookimpl
    def fsd_addoption(self, options: Any) -> None:
        options.add("mine", "level", "how much", "1")
        options.add("mine", "mode", "which")

    @hookimpl
    def fsd_configure(self, config: PluginConfig) -> None:
        self.seen = config.options("mine")
        if self.seen.get("mode") == "bad":
            raise ValueError("mode=bad is not a mode")


def test_options_defaults_given_and_errors() -> None:
    plugin = WithOptions()
    plugin_manager(plugin, options={"mine": {"mode": "fast"}})
    assert plugin.seen == {"level": "1", "mode": "fast"}
    with pytest.raises(PluginError, match="unknown key"):
        plugin_manager(WithOptions(), options={"mine": {"colour": "red"}})
    with pytest.raises(PluginError, match="no loaded plugin declares options under 'other'"):
        plugin_manager(WithOptions(), options={"other": {"a": "b"}})
    with pytest.raises(PluginError, match="mode=bad is not a mode"):
        plugin_manager(WithOptions(), options={"mine": {"mode": "bad"}})


# --- FUSE check semantics -----------------------------------------------------------------------


def test_no_plugins_means_no_hooks() -> None:
    plugins = Plugins()
    assert not plugins.has_fuse_hooks and not plugins.has_allowlist_hooks
    assert plugins.fuse_check(info()) is None
    assert plugins.allowlist_callbacks() == (None, None)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, None),
        (errno.EPERM, errno.EPERM),
        (errno.ENOENT, errno.ENOENT),
        ("EPERM", errno.EACCES),  # wrong type: plugin error, fail closed
        (True, errno.EACCES),
        (0, errno.EACCES),  # there is no "allow"
        (-1, errno.EACCES),
        (5000, errno.EACCES),
        (1.5, errno.EACCES),
    ],
)
def test_check_results(result: object, expected: int | None, caplog: Any) -> None:
    plugins = Plugins()
    plugins.register(Deny(result), name="denier")
    with caplog.at_level(logging.ERROR, "fsd.plugins"):
        assert plugins.fuse_check(info()) == expected
    if expected == errno.EACCES:
        assert "plugin 'denier'" in caplog.text


def test_raising_check_denies_and_logs_the_plugin(caplog: Any) -> None:
    class Broken:
        @hookimpl
        def fsd_fuse_check(self, request: FuseRequestInfo) -> int | None:
            raise RuntimeError("boom")

    plugins = plugin_manager()
    plugins.register(Broken(), name="broken")
    assert plugins.fuse_check(info()) == errno.EACCES
    assert "plugin 'broken': fsd_fuse_check raised on LOOKUP /x" in caplog.text


def test_async_check_is_a_plugin_error(caplog: Any) -> None:
    class Async:
        @hookimpl
        async def fsd_fuse_check(self, request: FuseRequestInfo) -> int | None:
            return None

    plugins = plugin_manager(Async())
    # filterwarnings=error: an unawaited coroutine would fail this test; it must be closed.
    assert plugins.fuse_check(info()) == errno.EACCES
    assert "returned an awaitable" in caplog.text


def test_first_denial_wins_and_stops_later_checks() -> None:
    first, second, abstain = Deny(errno.EPERM), Deny(errno.ENOENT), Deny(None)
    plugins = Plugins()
    plugins.register(second, name="second")
    plugins.register(first, name="first")  # registered last: called first (pluggy order)
    plugins.register(abstain, name="abstain")
    assert plugins.fuse_check(info()) == errno.EPERM
    assert (abstain.calls, first.calls, second.calls) == (1, 1, 0)


def test_opt_in_arguments() -> None:
    seen: list[Any] = []

    class Partial:
        @hookimpl
        def fsd_fuse_audit(self, error: int) -> None:
            seen.append(error)

    plugins = plugin_manager(Partial())
    plugins.fuse_audit(info(), 5, 0)
    assert seen == [5]


def test_audit_failure_is_isolated(caplog: Any) -> None:
    class Broken:
        @hookimpl
        def fsd_fuse_audit(self, request: FuseRequestInfo) -> None:
            raise OSError("disk full")

    recorder = Recorder()
    plugins = Plugins()
    plugins.register(recorder)
    plugins.register(Broken(), name="broken")
    plugins.fuse_audit(info(), 0, 0)
    assert len(recorder.of("fsd_fuse_audit")) == 1
    assert "plugin 'broken': fsd_fuse_audit raised" in caplog.text


def test_unregister_refreshes_flags() -> None:
    plugins = Plugins()
    plugins.register(Recorder(), name="rec")
    assert plugins.has_fuse_check and plugins.has_fuse_audit
    plugins.unregister("rec")
    assert not plugins.has_fuse_hooks


# --- allowlist ----------------------------------------------------------------------------------


class AllowlistPolicy:
    def __init__(self, verdict: Callable[[AllowlistChange], object]) -> None:
        self.verdict = verdict
        self.audits: list[tuple[AllowlistChange, Response]] = []

    @hookimpl
    def fsd_allowlist_check(self, change: AllowlistChange) -> object:
        return self.verdict(change)

    @hookimpl
    def fsd_allowlist_audit(self, change: AllowlistChange, response: Response) -> None:
        self.audits.append((change, response))


def _send(plugins: Plugins, allowlist: Allowlist, packet: bytes) -> Response:
    check, after = plugins.allowlist_callbacks()
    return handle_packet(allowlist, packet, check=check, after=after).response


def test_allowlist_check_and_audit_through_the_handler() -> None:
    policy = AllowlistPolicy(lambda c: "no secrets" if "/secret" in c.path_strings() else None)
    plugins = plugin_manager(policy)
    allowlist = Allowlist()
    assert _send(plugins, allowlist, b'{"AddPaths":{"paths":["/a"]}}') == Ok()
    assert _send(plugins, allowlist, b'{"AddPaths":{"paths":["/secret"]}}') == Err("no secrets")
    assert [(c.op, c.path_strings(), r) for c, r in policy.audits] == [
        ("add", ["/a"], Ok()),
        ("add", ["/secret"], Err("no secrets")),
    ]


@pytest.mark.parametrize("verdict", [42, RuntimeError("boom")])
def test_allowlist_check_failure_refuses(verdict: object) -> None:
    def decide(change: AllowlistChange) -> object:
        if isinstance(verdict, Exception):
            raise verdict
        return verdict

    plugins = plugin_manager(AllowlistPolicy(decide))
    response = _send(plugins, Allowlist(), b'{"AddPaths":{"paths":["/a"]}}')
    assert isinstance(response, Err) and "policy check failed" in response.message


# --- lifecycle ----------------------------------------------------------------------------------


async def test_lifecycle_hooks_await_results_and_survive_errors(caplog: Any) -> None:
    events: list[str] = []

    class Life:
        @hookimpl
        def fsd_daemon_started(self, daemon: DaemonInfo) -> Coroutine[Any, Any, None]:
            async def later() -> None:
                await trio.lowlevel.checkpoint()
                events.append(f"started {daemon.transport}")

            return later()

        @hookimpl
        def fsd_vmm_connected(self, vmm: VmmInfo) -> None:
            raise RuntimeError("broken")

        @hookimpl
        async def fsd_daemon_stopping(self, reason: str) -> None:
            events.append(f"stopping {reason}")

        @hookimpl
        def fsd_reload(self) -> None:
            events.append("reload")

    plugins = plugin_manager(Life())
    await plugins.daemon_started(DaemonInfo("/srv", "vhost-user", "/run/fs.sock"))
    await plugins.vmm_connected(VmmInfo(1, 2, 3))
    plugins.reload()
    with trio.CancelScope() as scope:
        scope.cancel()
        await plugins.daemon_stopping("signal SIGTERM")  # shielded: runs while cancelled
    assert events == ["started vhost-user", "reload", "stopping signal SIGTERM"]
    assert "fsd_vmm_connected raised" in caplog.text


async def test_lifecycle_awaitable_is_awaited_to_completion_then_cancelled(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """As documented: the daemon waits for a lifecycle awaitable, at most LIFECYCLE_TIMEOUT,
    so "background work" returned from fsd_daemon_started delays it and is then cancelled."""
    monkeypatch.setattr("fsd.plugins.caller.LIFECYCLE_TIMEOUT", 0.2)
    events: list[str] = []

    class Background:
        @hookimpl
        def fsd_daemon_started(self) -> Coroutine[Any, Any, None]:
            async def forever() -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    events.append("cancelled")

            return forever()

    plugins = plugin_manager(Background())
    start = trio.current_time()
    await plugins.daemon_started(DaemonInfo("/srv", "vhost-user", "/run/fs.sock"))
    assert trio.current_time() - start >= 0.2
    assert events == ["cancelled"]
    assert "did not finish within 0.2 s and was cancelled" in caplog.text
    assert "run long work on your own thread" in caplog.text
