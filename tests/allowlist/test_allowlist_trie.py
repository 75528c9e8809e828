"""The allowlist trie: every case of crosvm's allowlist.rs unit tests, and our additions."""

import pytest

from fsd.allowlist.paths import normalize
from fsd.allowlist.trie import DENIED, FULL, TRAVERSE, Access, Allowlist, UpdateError


def make(*paths: str) -> Allowlist:
    allowlist = Allowlist()
    allowlist.add(normalize(p) for p in paths)
    return allowlist


def level(allowlist: Allowlist, path: str) -> Access:
    """Check ``access`` and ``child_access`` agree, and return the level."""
    parts = normalize(path)
    result = allowlist.access(parts)
    if parts:
        assert allowlist.child_access(parts[:-1], parts[-1]) is result
    return result


def listed(allowlist: Allowlist, path: str) -> set[str] | None:
    names = allowlist.visible_children(normalize(path))
    return None if names is None else set(names)


def remove(allowlist: Allowlist, *paths: str) -> None:
    allowlist.remove(normalize(p) for p in paths)


def test_empty_allowlist_denies_everything() -> None:
    allowlist = Allowlist()
    assert allowlist.enabled
    assert level(allowlist, "/") is DENIED
    assert level(allowlist, "/a") is DENIED
    assert listed(allowlist, "/") == set()
    assert allowlist.explicit_paths() == []


def test_added_path_is_full_ancestors_traverse() -> None:
    allowlist = make("/a/b")
    assert level(allowlist, "/") is TRAVERSE
    assert level(allowlist, "/a") is TRAVERSE
    assert level(allowlist, "/a/b") is FULL
    assert level(allowlist, "/a/b/c") is FULL
    assert level(allowlist, "/a/b/c/d/e") is FULL
    assert level(allowlist, "/a/c") is DENIED
    assert level(allowlist, "/a/bb") is DENIED
    assert level(allowlist, "/b") is DENIED
    assert level(allowlist, "/a/c/b") is DENIED


def test_levels_are_ordered_for_visible_and_writable_checks() -> None:
    assert DENIED < TRAVERSE < FULL
    allowlist = make("/a/b")
    assert level(allowlist, "/a") >= TRAVERSE
    assert level(allowlist, "/a") != FULL


def test_multiple_paths() -> None:
    allowlist = make("/a/b", "/a/c/d", "/x")
    assert level(allowlist, "/a") is TRAVERSE
    assert level(allowlist, "/a/c") is TRAVERSE
    assert level(allowlist, "/a/c/d/e") is FULL
    assert level(allowlist, "/x/y") is FULL
    assert level(allowlist, "/a/c/e") is DENIED
    assert allowlist.explicit_paths() == [("a", "b"), ("a", "c", "d"), ("x",)]


def test_adding_is_idempotent() -> None:
    allowlist = make("/a", "/a")
    allowlist.add([normalize("/a")])
    assert allowlist.explicit_paths() == [("a",)]
    remove(allowlist, "/a")
    assert level(allowlist, "/a") is DENIED


def test_root_allows_the_whole_share() -> None:
    allowlist = make("/")
    assert level(allowlist, "/") is FULL
    assert level(allowlist, "/any/thing") is FULL
    assert listed(allowlist, "/") is None
    assert allowlist.explicit_paths() == [()]


def test_remove() -> None:
    allowlist = make("/a/b")
    remove(allowlist, "/a/b")
    assert level(allowlist, "/") is DENIED
    assert level(allowlist, "/a") is DENIED
    assert level(allowlist, "/a/b") is DENIED
    assert allowlist.explicit_paths() == []
    assert listed(allowlist, "/") == set()


def test_remove_parent_keeps_child() -> None:
    allowlist = make("/a/b", "/a/b/c")
    remove(allowlist, "/a/b")
    assert level(allowlist, "/a/b") is TRAVERSE
    assert level(allowlist, "/a/b/c") is FULL
    assert level(allowlist, "/a/b/c/x") is FULL
    assert level(allowlist, "/a/b/d") is DENIED
    assert listed(allowlist, "/a/b") == {"c"}


def test_remove_inherited_child_keeps_it_reachable_through_the_parent() -> None:
    allowlist = make("/a/b", "/a/b/c")
    remove(allowlist, "/a/b/c")
    assert level(allowlist, "/a/b/c") is FULL
    assert allowlist.explicit_paths() == [("a", "b")]


def test_remove_sibling() -> None:
    allowlist = make("/a/b", "/a/c")
    remove(allowlist, "/a/b")
    assert level(allowlist, "/a") is TRAVERSE
    assert level(allowlist, "/a/b") is DENIED
    assert level(allowlist, "/a/c") is FULL
    assert listed(allowlist, "/a") == {"c"}


def test_remove_root_keeps_other_paths() -> None:
    allowlist = make("/", "/a")
    remove(allowlist, "/")
    assert level(allowlist, "/") is TRAVERSE
    assert level(allowlist, "/a") is FULL
    assert level(allowlist, "/b") is DENIED


@pytest.mark.parametrize(
    ("added", "removed"),
    [
        ((), "/a"),  # never added
        (("/a/b",), "/a"),  # only a traverse ancestor
        (("/a",), "/a/b"),  # only inherited from /a
        (("/a/b",), "/a/b/c"),
        (("/a/b",), "/"),
    ],
)
def test_remove_refuses_paths_that_were_not_added(added: tuple[str, ...], removed: str) -> None:
    allowlist = make(*added)
    with pytest.raises(UpdateError, match="not an added path"):
        remove(allowlist, removed)
    assert allowlist.explicit_paths() == sorted(normalize(p) for p in added)


def test_remove_batch_is_atomic() -> None:
    """crosvm's listener test step 3: a valid path is rolled back with an invalid one."""
    allowlist = make("/a", "/b")
    generation = allowlist.generation
    with pytest.raises(UpdateError, match="/c"):
        remove(allowlist, "/a", "/c", "/b")
    assert allowlist.explicit_paths() == [("a",), ("b",)]
    assert allowlist.generation == generation
    assert level(allowlist, "/a") is FULL


def test_removing_the_same_path_twice_in_a_batch_fails_as_a_whole() -> None:
    allowlist = make("/a")
    with pytest.raises(UpdateError):
        remove(allowlist, "/a", "/a")
    assert level(allowlist, "/a") is FULL


def test_empty_batches_change_nothing() -> None:
    allowlist = make("/a")
    allowlist.add([])
    allowlist.remove([])
    assert allowlist.explicit_paths() == [("a",)]


def test_visible_children() -> None:
    allowlist = make("/a/b", "/a/c/d", "/e")
    assert listed(allowlist, "/") == {"a", "e"}
    assert listed(allowlist, "/a") == {"b", "c"}
    assert listed(allowlist, "/a/c") == {"d"}
    assert listed(allowlist, "/a/b") is None
    assert listed(allowlist, "/a/b/deep") is None
    assert listed(allowlist, "/e") is None
    assert listed(allowlist, "/x") == set()
    assert listed(allowlist, "/a/x") == set()


def test_published_views_never_change() -> None:
    """Readers may keep a listing while the control socket applies the next batch."""
    allowlist = make("/a/b")
    before = allowlist.visible_children(("a",))
    assert before is not None
    allowlist.add([("a", "c")])
    remove(allowlist, "/a/b")
    assert set(before) == {"b"}
    assert listed(allowlist, "/a") == {"c"}


def test_names_are_exact_strings() -> None:
    """Case-sensitive, byte-exact; names the filesystem decoded with surrogateescape only
    match inside a FULL subtree (no JSON path can contain a lone surrogate)."""
    allowlist = make("/Dir/sub")
    assert level(allowlist, "/dir") is DENIED
    assert allowlist.child_access(("Dir",), "SUB") is DENIED
    assert allowlist.child_access(("Dir",), "\udcff") is DENIED
    assert allowlist.child_access(("Dir", "sub"), "\udcff") is FULL


def test_generation_counts_applied_batches() -> None:
    allowlist = Allowlist()
    assert allowlist.generation == 0
    allowlist.add([("a",)])
    remove(allowlist, "/a")
    assert allowlist.generation == 2


def test_allow_all_is_the_disabled_allowlist() -> None:
    allowlist = Allowlist.allow_all()
    assert not allowlist.enabled
    assert level(allowlist, "/") is FULL
    assert level(allowlist, "/any/where") is FULL
    assert listed(allowlist, "/x") is None
    assert allowlist.explicit_paths() == [()]
    with pytest.raises(UpdateError, match="disabled"):
        allowlist.add([("a",)])
    with pytest.raises(UpdateError, match="disabled"):
        allowlist.remove([()])
    assert repr(allowlist) == "Allowlist.allow_all()"


def test_repr() -> None:
    assert repr(make("/b", "/a/c")) == "<Allowlist ['/a/c', '/b']>"
