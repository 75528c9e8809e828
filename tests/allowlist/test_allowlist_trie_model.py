"""The trie against a brute-force model: a plain set of added paths, checked by prefixes."""

import itertools
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from fsd.allowlist.paths import SharePath
from fsd.allowlist.trie import DENIED, FULL, TRAVERSE, Access, Allowlist, UpdateError, _Node

NAMES = st.sampled_from(["a", "b", "c"])
PATHS = st.lists(NAMES, max_size=4).map(tuple)
OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.lists(PATHS, max_size=3)), max_size=25
)
# Every path up to depth 4 over the names plus "d", which is never added.
ALL_PATHS = [p for n in range(5) for p in itertools.product("abcd", repeat=n)]


def model_access(added: set[SharePath], path: SharePath) -> Access:
    if any(path[: len(e)] == e for e in added):
        return FULL
    if any(len(e) > len(path) and e[: len(path)] == path for e in added):
        return TRAVERSE
    return DENIED


def model_visible(added: set[SharePath], path: SharePath) -> set[str] | None:
    if model_access(added, path) is FULL:
        return None
    return {e[len(path)] for e in added if len(e) > len(path) and e[: len(path)] == path}


def dump(node: _Node) -> object:
    return (node.level, {name: dump(child) for name, child in node.children.items()})


def nodes(node: _Node, path: SharePath = ()) -> Iterator[SharePath]:
    for name, child in node.children.items():
        yield (*path, name)
        yield from nodes(child, (*path, name))


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_trie_matches_model(ops: list[tuple[str, list[SharePath]]]) -> None:
    allowlist = Allowlist()
    added: set[SharePath] = set()
    for op, batch in ops:
        published = allowlist._root
        published_dump = dump(published)
        if op == "add":
            allowlist.add(batch)
            added.update(batch)
        else:
            remaining = set(added)
            ok = True
            for path in batch:
                if path not in remaining:
                    ok = False
                    break
                remaining.remove(path)
            try:
                allowlist.remove(batch)
            except UpdateError:
                assert not ok
            else:
                assert ok
                added = remaining
        # Copy-on-write: what readers saw before the batch is untouched.
        assert dump(published) == published_dump
        # Pruned: the only nodes are the prefixes of added paths.
        prefixes = {e[:n] for e in added for n in range(1, len(e) + 1)}
        assert set(nodes(allowlist._root)) == prefixes
        assert allowlist.explicit_paths() == sorted(added)
        for path in ALL_PATHS:
            expected = model_access(added, path)
            assert allowlist.access(path) is expected, path
            if path:
                assert allowlist.child_access(path[:-1], path[-1]) is expected
            visible = allowlist.visible_children(path)
            assert (None if visible is None else set(visible)) == model_visible(added, path)
