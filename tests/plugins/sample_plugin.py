"""A plugin loaded by ``module:object`` path in the manager tests."""

from __future__ import annotations

from fsd.hookinfo import FuseRequestInfo
from fsd.hookspecs import hookimpl


@hookimpl
def fsd_fuse_check(request: FuseRequestInfo) -> int | None:
    return 13 if request.name == "forbidden" else None


class Misspelled:
    """Implements a hook that does not exist: check_pending must refuse it."""

    @hookimpl
    def fsd_fuse_chek(self, request: FuseRequestInfo) -> int | None:
        return None


misspelled = Misspelled()
