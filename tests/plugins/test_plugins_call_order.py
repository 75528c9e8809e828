"""fsd's own hook-calling loop (:class:`fsd.plugins.Plugins`) against pluggy's ``pm.hook.X(...)``.

The daemon calls the per-request hooks itself, not through pluggy, so it must reproduce
pluggy's semantics exactly: the same implementations, in the same order (tryfirst, plain,
trylast; the last registered first within each), with the same (opt-in) arguments, and for the
check hooks the same ``firstresult`` stop at the first non-None result. Each example registers
random plugins in a random order, unregisters some, and compares both calls hook by hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from fsd.allowlist.handler import AllowlistChange
from fsd.allowlist.protocol import Err
from fsd.hookinfo import FuseRequestInfo
from fsd.hookspecs import hookimpl
from fsd.plugins import Plugins, create_manager

REQUEST = FuseRequestInfo(
    op="LOOKUP", opcode=1, unique=2, nodeid=1, path="/", name="x", uid=1000, gid=1000,
    pid=42, transport="vhost-user", op_class="metadata", writes=False,
)  # fmt: skip
CHANGE = AllowlistChange("add", (("a", "b"),))
RESPONSE = Err("no")

#: Each hook's arguments, as pluggy is called with them.
ARGUMENTS: dict[str, dict[str, object]] = {
    "fsd_fuse_check": {"request": REQUEST},
    "fsd_fuse_audit": {"request": REQUEST, "error": 13, "bytes_moved": 4096},
    "fsd_allowlist_check": {"change": CHANGE},
    "fsd_allowlist_audit": {"change": CHANGE, "response": RESPONSE},
}
Record = Callable[..., object]

#: Implementations taking each subset of arguments a plugin may opt into (names matter to pluggy).
SIGNATURES: dict[str, dict[tuple[str, ...], Callable[[Record], Callable[..., object]]]] = {
    "fsd_fuse_check": {
        ("request",): lambda call: lambda request: call(request=request),
        (): lambda call: lambda: call(),
    },
    "fsd_fuse_audit": {
        ("request", "error", "bytes_moved"): lambda call: (
            lambda request, error, bytes_moved: call(
                request=request, error=error, bytes_moved=bytes_moved
            )
        ),
        ("error", "bytes_moved"): lambda call: (
            lambda error, bytes_moved: call(error=error, bytes_moved=bytes_moved)
        ),
        ("request",): lambda call: lambda request: call(request=request),
        (): lambda call: lambda: call(),
    },
    "fsd_allowlist_check": {
        ("change",): lambda call: lambda change: call(change=change),
        (): lambda call: lambda: call(),
    },
    "fsd_allowlist_audit": {
        ("change", "response"): lambda call: (
            lambda change, response: call(change=change, response=response)
        ),
        ("response",): lambda call: lambda response: call(response=response),
        (): lambda call: lambda: call(),
    },
}
ORDERINGS: dict[str, tuple[bool, bool]] = {  # (tryfirst, trylast)
    "plain": (False, False),
    "tryfirst": (True, False),
    "trylast": (False, True),
}
#: What a check implementation may answer: abstain, or a valid denial / refusal.
RESULTS: dict[str, st.SearchStrategy[object]] = {
    "fsd_fuse_check": st.none() | st.integers(1, 4095),
    "fsd_fuse_audit": st.none(),
    "fsd_allowlist_check": st.none() | st.text(max_size=3),
    "fsd_allowlist_audit": st.none(),
}


@attrs.frozen
class Impl:
    """One planned implementation: its ordering, the arguments it takes, what it returns."""

    ordering: str
    takes: tuple[str, ...]
    result: object


def impls(hook: str) -> st.SearchStrategy[Impl]:
    return st.builds(
        Impl, st.sampled_from(sorted(ORDERINGS)), st.sampled_from(list(SIGNATURES[hook])),
        RESULTS[hook],
    )  # fmt: skip


#: A plugin: the hooks it implements, and how.
plugin_plans = st.fixed_dictionaries({}, optional={hook: impls(hook) for hook in ARGUMENTS})


class _Plugin:
    """An object with hook implementations set as attributes (hashable, unlike a namespace)."""


def build_plugin(name: str, plan: dict[str, Impl], calls: list[tuple[str, str, dict[str, Any]]]
                 ) -> object:  # fmt: skip
    plugin = _Plugin()
    for hook, impl in plan.items():

        def call(hook: str = hook, impl: Impl = impl, **kwargs: Any) -> object:
            calls.append((name, hook, kwargs))
            return impl.result

        function = SIGNATURES[hook][impl.takes](call)
        tryfirst, trylast = ORDERINGS[impl.ordering]
        setattr(plugin, hook, hookimpl(tryfirst=tryfirst, trylast=trylast)(function))
    return plugin


def call_through_fsd(plugins: Plugins, hook: str) -> object:
    """What the daemon does for ``hook``; the checks' result (audits have none)."""
    if hook == "fsd_fuse_check":
        return plugins.fuse_check(REQUEST)
    if hook == "fsd_allowlist_check":
        return plugins.allowlist_check(CHANGE)
    if hook == "fsd_fuse_audit":
        plugins.fuse_audit(REQUEST, 13, 4096)
    else:
        plugins.allowlist_audit(CHANGE, RESPONSE)
    return None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fsd_calls_hooks_as_pluggy_does(data: st.DataObject) -> None:
    plans = data.draw(st.lists(plugin_plans, max_size=7), label="plugins")
    order = data.draw(st.permutations(range(len(plans))), label="registration order")
    gone = data.draw(st.sets(st.sampled_from(order)) if order else st.just(set()), label="gone")
    calls: list[tuple[str, str, dict[str, Any]]] = []
    plugins = Plugins(create_manager())
    for i in order:
        plugins.register(build_plugin(f"p{i}", plans[i], calls), name=f"p{i}")
    for i in sorted(gone):
        plugins.unregister(f"p{i}")

    for hook, kwargs in ARGUMENTS.items():
        calls.clear()
        by_pluggy = getattr(plugins.pm.hook, hook)(**kwargs)
        pluggy_calls = list(calls)
        calls.clear()
        by_fsd = call_through_fsd(plugins, hook)
        assert calls == pluggy_calls, hook
        if hook == "fsd_fuse_check":
            assert by_fsd == by_pluggy
            assert plugins.has_fuse_check == bool(plugins.pm.hook.fsd_fuse_check.get_hookimpls())
        elif hook == "fsd_allowlist_check":
            # An empty reason still refuses; fsd names the plugin in the message.
            expected = f"refused by plugin {calls[-1][0]!r}" if by_pluggy == "" else by_pluggy
            assert by_fsd == expected


def test_the_order_is_tryfirst_then_last_registered_then_trylast() -> None:
    """One example spelled out, so that the property above cannot pass vacuously."""
    calls: list[tuple[str, str, dict[str, Any]]] = []
    plugins = Plugins(create_manager())
    plans = {
        "first": Impl("tryfirst", ("request",), None),
        "early": Impl("plain", (), None),
        "last": Impl("trylast", ("request",), None),
        "late": Impl("plain", ("request",), 5),
        "never": Impl("plain", (), 7),  # registered earliest: after the denial, so not called
    }
    for name in ["last", "never", "first", "early", "late"]:
        plugins.register(build_plugin(name, {"fsd_fuse_check": plans[name]}, calls), name=name)
    assert plugins.fuse_check(REQUEST) == 5
    assert [name for name, _, _ in calls] == ["first", "late"]
    calls.clear()
    plugins.unregister("late")
    assert plugins.fuse_check(REQUEST) == 7
    assert [name for name, _, _ in calls] == ["first", "early", "never"]
