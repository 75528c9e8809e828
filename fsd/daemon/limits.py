"""Process limits a file server needs: one open fd per inode the client knows."""

from __future__ import annotations

import logging
import resource

__all__ = ["raise_open_files_limit"]

log = logging.getLogger("fsd")


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as virtiofsd does at start-up.

    fsd holds an O_PATH fd for every inode the guest has looked up; with systemd's default
    soft limit of 1024, ``ls -l`` of a large directory would fail with EMFILE. Returns the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
    return soft
