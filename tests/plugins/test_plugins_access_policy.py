"""The access-policy plugin: rules, uids, rate limits, reload, and its denials through FUSE."""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fsd_access_policy import AccessPolicy, PolicyError, load_rules
from fsd_access_policy.bucket import TokenBucket

from fsd.allowlist.handler import handle_packet
from fsd.allowlist.protocol import Err, Ok
from fsd.allowlist.trie import Allowlist
from fsd.fuse import abi
from fsd.fuse.abi import Opcode
from fsd.plugins import PluginError, Plugins
from fsd.testing import fuse_requests as fr
from fsd.testing.mount import devfuse_unavailable
from fsd.testing.plugins import hooked_client, mounted_with_plugins, plugin_manager

POLICY = """
read_only = ["/ro"]
deny = ["/secret", "*.key"]

[[uid]]
uid = 1000
read_only = true

[[uid]]
uid = 2000
write_allowed = ["/scratch"]
deny = ["/admin"]
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def layout(share: Path) -> Path:
    for d in ("ro", "secret", "scratch", "admin", "rw"):
        (share / d).mkdir()
    (share / "ro" / "file").write_text("r")
    (share / "secret" / "s").write_text("s")
    (share / "rw" / "id.key").write_text("k")
    return share


def configured(path: Path, **kw: Any) -> tuple[AccessPolicy, Plugins]:
    """The plugin configured as ``--plugin-cfg access-policy:rules=PATH`` would."""
    policy = AccessPolicy(**kw)
    return policy, plugin_manager(policy, options={"access-policy": {"rules": str(path)}})


def test_rules_through_fuse(layout: Path, policy_file: Path, caplog: Any) -> None:
    policy, manager = configured(policy_file)
    with hooked_client(layout, manager) as c:
        ro = c.lookup(1, "ro")
        assert c.errno_of(fr.mkdir(c.next_unique(), ro.nodeid, "new")) == errno.EROFS
        f = c.lookup(ro.nodeid, "file")
        assert c.errno_of(fr.open_(c.next_unique(), f.nodeid, os.O_WRONLY)) == errno.EROFS
        c.open(f.nodeid, os.O_RDONLY)  # reading a read-only subtree is fine
        assert c.errno_of(fr.lookup(c.next_unique(), 1, "secret")) == errno.EACCES
        rw = c.lookup(1, "rw")
        assert c.errno_of(fr.lookup(c.next_unique(), rw.nodeid, "id.key")) == errno.EACCES
        # renaming into a read-only subtree is a write there
        c.create(rw.nodeid, "x", os.O_RDWR)
        move = fr.rename(c.next_unique(), rw.nodeid, "x", ro.nodeid, "x")
        assert c.errno_of(move) == errno.EROFS
        c.mkdir(rw.nodeid, "ok")
    assert not (layout / "ro" / "new").exists() and (layout / "rw" / "ok").is_dir()
    assert policy.denials == 5
    assert "denied MKDIR /ro/new (uid 0 pid 0): /ro/new is in a read-only subtree" in caplog.text


def test_per_uid_rules(layout: Path, policy_file: Path) -> None:
    _, manager = configured(policy_file)
    with hooked_client(layout, manager) as c:
        u1000 = fr.mkdir(c.next_unique(), 1, "mine", uid=1000, gid=1000)
        assert c.errno_of(u1000) == errno.EROFS
        assert c.errno_of(fr.mkdir(c.next_unique(), 1, "top", uid=2000)) == errno.EROFS
        scratch = c.lookup(1, "scratch")
        assert c.errno_of(fr.mkdir(c.next_unique(), scratch.nodeid, "d", uid=2000)) == 0
        assert (
            c.errno_of(
                fr.lookup(
                    c.next_unique(),
                    1,
                    "admin",
                )
            )
            == 0
        )
        admin = fr.request(1, c.next_unique(), 1, b"admin\0", uid=2000)
        assert c.errno_of(admin) == errno.EACCES
    assert (layout / "scratch" / "d").is_dir()


SUBTREES = """
read_only = ["/data/ro"]
deny = ["/data/secret", "/keys/*.key", "*/.ssh"]

[[uid]]
uid = 2000
deny = ["/other/admin"]
"""


@pytest.fixture
def nested(share: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A share whose protected roots sit below directories a guest could rename."""
    for d in ("data/ro", "data/secret", "other/admin", "keys", "home/u/.ssh", "free/sub"):
        (share / d).mkdir(parents=True)
    (share / "data" / "ro" / "f").write_text("orig")
    rules = tmp_path / "nested.toml"
    rules.write_text(SUBTREES)
    return share, rules


def test_renaming_or_removing_an_ancestor_of_a_protected_root_is_denied(
    nested: tuple[Path, Path],
) -> None:
    """Rules match paths: moving ``/data`` away would take ``/data/ro`` out of its rule."""
    share, rules = nested
    _, manager = configured(rules)
    with hooked_client(share, manager) as c:
        data, free = c.lookup(1, "data").nodeid, c.lookup(1, "free").nodeid
        errno_of = c.errno_of

        assert errno_of(fr.rename(c.next_unique(), 1, "data", 1, "moved")) == errno.EROFS
        flags = 1  # RENAME_NOREPLACE
        assert errno_of(fr.rename2(c.next_unique(), 1, "data", 1, "m", flags)) == errno.EROFS
        assert errno_of(fr.rmdir(c.next_unique(), 1, "data")) == errno.EROFS
        assert errno_of(fr.rename(c.next_unique(), data, "ro", 1, "ro2")) == errno.EROFS
        assert errno_of(fr.rename(c.next_unique(), data, "secret", 1, "s")) == errno.EACCES
        # a glob's literal directory is guarded too; a leading-wildcard glob follows the name
        assert errno_of(fr.rename(c.next_unique(), 1, "keys", 1, "k2")) == errno.EACCES
        assert errno_of(fr.rename(c.next_unique(), 1, "home", 1, "h2")) == 0
        assert errno_of(fr.lookup(c.next_unique(), c.lookup(1, "h2").nodeid, "u")) == 0
        # the destination: replacing an (empty) protected ancestor is a move too
        c.mkdir(1, "empty")
        assert errno_of(fr.rename(c.next_unique(), 1, "empty", data, "ro")) == errno.EROFS
        # a per-uid literal deny guards for that uid only
        body = abi.RENAME_IN.pack(1) + b"other\0other2\0"
        as_2000 = fr.request(Opcode.RENAME, c.next_unique(), 1, body, uid=2000)
        assert errno_of(as_2000) == errno.EACCES
        assert errno_of(fr.rename(c.next_unique(), 1, "other", 1, "other2")) == 0
        # unrelated subtrees still move freely
        assert errno_of(fr.rename(c.next_unique(), free, "sub", free, "sub2")) == 0
        assert errno_of(fr.rmdir(c.next_unique(), free, "sub2")) == 0
    assert (share / "data" / "ro" / "f").read_text() == "orig"
    assert (share / "h2" / "u" / ".ssh").is_dir() and (share / "other2" / "admin").is_dir()


def test_rate_limit_with_a_fake_clock(layout: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rate.toml"
    rules.write_text("[rate.namespace]\nper_second = 2\nburst = 3\n")
    now = [0.0]
    _, manager = configured(rules, clock=lambda: now[0])
    with hooked_client(layout, manager) as c:
        results = [c.errno_of(fr.mkdir(c.next_unique(), 1, f"d{i}")) for i in range(5)]
        assert results == [0, 0, 0, errno.EAGAIN, errno.EAGAIN]
        now[0] += 1.0  # two tokens back
        results = [c.errno_of(fr.mkdir(c.next_unique(), 1, f"e{i}")) for i in range(3)]
        assert results == [0, 0, errno.EAGAIN]
        c.getattr(1)  # other classes are not limited


def test_token_bucket() -> None:
    bucket = TokenBucket(10, 1, now=0.0)
    assert bucket.take(0.0) and not bucket.take(0.0)
    assert not bucket.take(0.05) and bucket.take(0.2)


def test_token_bucket_admits_at_most_its_burst_from_two_threads() -> None:
    """Two queue threads share one bucket; an unlocked take() admitted ~40% too many."""
    burst = 50_000
    bucket = TokenBucket(per_second=1e-12, burst=burst, now=time.monotonic())
    admitted = [0, 0]

    def take(i: int) -> None:
        admitted[i] = sum(bucket.take(time.monotonic()) for _ in range(burst))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a loaded daemon does
    try:
        threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(admitted) == burst


def test_reload_swaps_rules_and_buckets_together(tmp_path: Path) -> None:
    """A check on a queue thread reads (rules, buckets) as one value while SIGHUP replaces it."""
    rules = tmp_path / "rate.toml"
    rules.write_text("[rate.metadata]\nper_second = 1\nburst = 5\n")
    policy, manager = configured(rules)
    before = policy.state
    rules.write_text('deny = ["/x"]\n')
    manager.reload()
    after = policy.state
    assert after is not before and after[0] is policy.rules and after[1] == {}


def test_reload_keeps_old_rules_on_a_bad_file(layout: Path, policy_file: Path, caplog: Any) -> None:
    _, manager = configured(policy_file)
    with hooked_client(layout, manager) as c:
        assert c.errno_of(fr.lookup(c.next_unique(), 1, "secret")) == errno.EACCES
        policy_file.write_text('deny = ["/admin"]\n')
        manager.reload()  # what the daemon does on SIGHUP
        assert c.errno_of(fr.lookup(c.next_unique(), 1, "secret")) == 0
        assert c.errno_of(fr.lookup(c.next_unique(), 1, "admin")) == errno.EACCES
        policy_file.write_text("deny = [unterminated\n")
        with caplog.at_level(logging.ERROR):
            manager.reload()
        assert "keeping the previous rules" in caplog.text
        assert c.errno_of(fr.lookup(c.next_unique(), 1, "admin")) == errno.EACCES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("read_only = '/x'", "read_only: expected a list"),
        ("read_only = ['x']", "must start with '/'"),
        ("deny_all = true", "unknown key"),
        ("[[uid]]\nuid = -1", "uid\\[0\\].uid"),
        ("[[uid]]\nuid = 1\nwrite = true", "unknown key"),
        ("[rate.reads]\nper_second = 1", "rate.reads: unknown operation class"),
        ("[rate.write]\nper_second = 0\nburst = 1", "must be positive"),
        ("x = ", "policy.toml"),
    ],
)
def test_invalid_rules(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        load_rules(str(path))


def test_missing_rules_option_stops_startup() -> None:
    with pytest.raises(PluginError, match="rules=FILE is required"):
        plugin_manager(AccessPolicy())
    with pytest.raises(PluginError, match="No such file"):
        plugin_manager(AccessPolicy(), options={"access-policy": {"rules": "/nonexistent"}})


def test_allowlist_add_of_a_denied_path_is_refused(policy_file: Path) -> None:
    _, manager = configured(policy_file)
    check, _ = manager.allowlist_callbacks()
    allowlist = Allowlist()
    refused = handle_packet(allowlist, b'{"AddPaths":{"paths":["/secret/x"]}}', check=check)
    assert isinstance(refused.response, Err) and "denied" in refused.response.message
    assert handle_packet(allowlist, b'{"AddPaths":{"paths":["/rw"]}}', check=check).response == Ok()


@pytest.mark.devfuse
def test_policy_on_a_real_mount(layout: Path, policy_file: Path, tmp_path: Path) -> None:
    """The host kernel as the FUSE client: the denials are what programs see."""
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted_with_plugins(layout, configured(policy_file)[1], mountpoint=mnt) as mount:
        root = mount.mountpoint
        assert (root / "ro" / "file").read_text() == "r"
        with pytest.raises(OSError, match="Read-only file system"):
            (root / "ro" / "new").write_text("x")
        with pytest.raises(PermissionError):
            (root / "secret" / "s").read_text()
        (root / "rw" / "new").write_text("fine")
    assert (layout / "rw" / "new").read_text() == "fine"
    assert not (layout / "ro" / "new").exists()


@pytest.mark.devfuse
def test_rename_cannot_carry_a_subtree_out_of_its_rule_on_a_real_mount(
    nested: tuple[Path, Path], tmp_path: Path
) -> None:
    """The reviewer's escape (``mv /data /moved``, then write ``/moved/ro/f``) through a kernel."""
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    share, rules = nested
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted_with_plugins(share, configured(rules)[1], mountpoint=mnt) as mount:
        root = mount.mountpoint
        with pytest.raises(OSError, match="Read-only file system"):
            os.rename(root / "data", root / "moved")
        with pytest.raises(PermissionError):
            os.rename(root / "keys", root / "moved")
        os.rename(root / "free", root / "moved")
    assert (share / "data" / "ro" / "f").read_text() == "orig"
    assert (share / "moved" / "sub").is_dir()
