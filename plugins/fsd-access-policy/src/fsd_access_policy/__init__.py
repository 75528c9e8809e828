"""fsd plugin ``access-policy``: deny FUSE operations by path, uid and rate, from a TOML file.

Options: ``--plugin-cfg access-policy:rules=/etc/fsd/policy.toml`` (required). The file
format is in :mod:`fsd_access_policy.rules`.

SIGHUP reloads the file without a restart: the daemon owns its signals and calls the
``fsd_reload`` hook, which rereads the file here. A file that fails to parse keeps the rules
in force and logs why. Every denial is logged (logger ``fsd_access_policy``). The plugin also
refuses allowlist additions of denied paths.

In fsd's sandbox the rules file's directory is kept read-only (``fsd_sandbox_paths``): an
editor replaces the file by renaming a new one over it, which a kept file alone would not
show. A relative ``rules`` path is taken from the directory fsd was started in.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from fsd.hookspecs import hookimpl
from fsd.sandbox import HostPath
from fsd_access_policy.bucket import TokenBucket
from fsd_access_policy.rules import PolicyError, Rules, parse_rules

if TYPE_CHECKING:
    from fsd.allowlist.handler import AllowlistChange
    from fsd.hookinfo import FuseRequestInfo
    from fsd.plugins import OptionRegistry, PluginConfig

__all__ = ["NAMESPACE", "AccessPolicy", "PolicyError", "Rules", "load_rules", "plugin"]

NAMESPACE: Final = "access-policy"
log = logging.getLogger("fsd_access_policy")


def load_rules(path: str) -> Rules:
    """Read and validate a rules file; raise :class:`PolicyError` (a ``ValueError``)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    try:
        return parse_rules(doc)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None


class AccessPolicy:
    """The plugin. ``clock`` is injectable so rate limits are testable without sleeping."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.path: str | None = None
        #: The rules and their buckets, replaced as one tuple: checks run on several queue
        #: threads while ``fsd_reload`` runs on the daemon's, and a check must never pair
        #: new rules with old buckets (or the reverse).
        self.state: tuple[Rules, dict[str, TokenBucket]] = (Rules(), {})
        self.clock = clock
        self.denials = 0
        self._lock = threading.Lock()  # for ``denials`` only

    @property
    def rules(self) -> Rules:
        """The rules in force."""
        return self.state[0]

    def use(self, rules: Rules) -> None:
        """Put ``rules`` in force (fresh rate buckets)."""
        now = self.clock()
        buckets = {name: TokenBucket(spec.per_second, spec.burst, now)
                   for name, spec in rules.rates.items()}  # fmt: skip
        self.state = (rules, buckets)  # one store: atomic for readers

    def load(self, path: str) -> None:
        """Load ``path`` and remember it for reloads; raise if it is invalid."""
        path = os.path.abspath(path)  # the working directory changes in the sandbox
        self.use(load_rules(path))
        self.path = path
        log.info("access policy loaded from %s", path)

    def reload(self) -> bool:
        """Reread the file; keep the old rules (and log) when the new file is bad."""
        if self.path is None:
            return False
        try:
            self.load(self.path)
        except PolicyError as exc:
            log.error("access policy not reloaded, keeping the previous rules: %s", exc)
            return False
        return True

    # --- hooks -----------------------------------------------------------------------------

    @hookimpl
    def fsd_addoption(self, options: OptionRegistry) -> None:
        options.add(NAMESPACE, "rules", "TOML rules file (required)")

    @hookimpl
    def fsd_configure(self, config: PluginConfig) -> None:
        path = config.options(NAMESPACE).get("rules")
        if not path:
            raise ValueError(f"{NAMESPACE}: --plugin-cfg {NAMESPACE}:rules=FILE is required")
        self.load(path)

    @hookimpl
    def fsd_sandbox_paths(self) -> list[HostPath]:
        """The rules file's directory, read-only, for reloads on SIGHUP."""
        if self.path is None:
            return []
        return [HostPath(os.path.dirname(self.path))]

    @hookimpl
    def fsd_reload(self) -> None:
        self.reload()

    @hookimpl
    def fsd_fuse_check(self, request: FuseRequestInfo) -> int | None:
        rules, buckets = self.state
        decision = rules.decide(request)
        if decision is None:
            bucket = buckets.get(request.op_class)
            if bucket is None or bucket.take(self.clock()):
                return None
            code, reason = errno.EAGAIN, f"rate limit for {request.op_class} operations"
        else:
            code, reason = decision.errno, decision.reason
        with self._lock:
            self.denials += 1
        log.warning(
            "denied %s %s (uid %d pid %d): %s",
            request.op, " -> ".join(request.paths()) or f"nodeid {request.nodeid}",
            request.uid, request.pid, reason,
        )  # fmt: skip
        return code

    @hookimpl
    def fsd_allowlist_check(self, change: AllowlistChange) -> str | None:
        if change.op != "add":
            return None
        for path in change.path_strings():
            if self.rules.denied_path(path):
                log.warning("refused allowlist add of %s: denied by the access policy", path)
                return f"{path} is denied by the access policy"
        return None


#: The object the ``access-policy`` entry point names.
plugin = AccessPolicy()
