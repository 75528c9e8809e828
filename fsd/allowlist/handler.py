"""Apply one control packet to the allowlist and say what to answer (pure, no I/O).

The server hands every received packet to ``handle_packet`` and sends back ``Outcome.reply``;
nothing here can raise on bad input. Policy plugins (issue 5) plug in through two callbacks:
``check`` may veto a change before it is applied, ``after`` sees every change and its answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs

from fsd.allowlist.paths import InvalidPathError, SharePath, format_path, normalize
from fsd.allowlist.protocol import (
    MAX_PACKET,
    AddPaths,
    Err,
    ListPaths,
    Ok,
    Paths,
    ProtocolError,
    Request,
    Response,
    decode_request,
    encode_response,
)
from fsd.allowlist.trie import Allowlist, UpdateError

logger = logging.getLogger("fsd.allowlist")


@attrs.frozen
class AllowlistChange:
    """One requested batch, after normalization: what hooks see and what gets logged."""

    op: Literal["add", "remove"]
    paths: tuple[SharePath, ...]

    def path_strings(self) -> list[str]:
        """The normalized paths as clients write them, for logs and messages."""
        return [format_path(path) for path in self.paths]


CheckHook: TypeAlias = Callable[[AllowlistChange], "str | None"]
"""Return a reason to refuse the change (sent back as ``{"Err": reason}``), or None to allow."""

AfterHook: TypeAlias = Callable[[AllowlistChange, Response], None]
"""Called for every decoded change, applied or not, with the response the client gets."""


def chain_checks(*checks: CheckHook | None) -> CheckHook | None:
    """One check made of several: the first reason to refuse wins."""
    present = [c for c in checks if c is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def check(change: AllowlistChange) -> str | None:
        for each in present:
            reason = each(change)
            if reason is not None:
                return reason
        return None

    return check


def chain_afters(*afters: AfterHook | None) -> AfterHook | None:
    """One audit callback made of several, called in order."""
    present = [a for a in afters if a is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def after(change: AllowlistChange, response: Response) -> None:
        for each in present:
            each(change, response)

    return after


@attrs.frozen
class Outcome:
    """What a packet led to: the reply to send and, for add/remove, the change and its fate."""

    response: Response
    reply: bytes
    change: AllowlistChange | None = None
    applied: bool = False


_FAILED = {"add": "Failed to add one or more paths", "remove": "Failed to remove one or more paths"}


def handle_packet(
    allowlist: Allowlist,
    packet: bytes,
    *,
    truncated: bool = False,
    max_packet: int = MAX_PACKET,
    check: CheckHook | None = None,
    after: AfterHook | None = None,
) -> Outcome:
    """Decode, validate, vet and apply one packet; every error becomes an ``Err`` answer.

    ``truncated`` is set by the transport when the packet did not fit its buffer. Error texts
    for add/remove start with crosvm's own ("Failed to add one or more paths") and then say why.
    """
    if truncated or len(packet) > max_packet:
        return _refuse(f"packet larger than {max_packet} bytes")
    try:
        request = decode_request(packet)
    except ProtocolError as exc:
        return _refuse(str(exc))
    return handle_request(allowlist, request, check=check, after=after)


def handle_request(
    allowlist: Allowlist,
    request: Request,
    *,
    check: CheckHook | None = None,
    after: AfterHook | None = None,
) -> Outcome:
    """Apply an already decoded request (the in-process API uses this without JSON)."""
    if isinstance(request, ListPaths):
        return _answer(Paths(tuple(format_path(p) for p in allowlist.explicit_paths())))
    op: Literal["add", "remove"] = "add" if isinstance(request, AddPaths) else "remove"
    normalized: list[SharePath] = []
    for index, path in enumerate(request.paths):
        try:
            normalized.append(normalize(path))
        except InvalidPathError as exc:
            variant = type(request).__name__
            return _answer(Err(f"{_FAILED[op]}: {exc} @ $.{variant}.paths[{index}]"))
    change = AllowlistChange(op, tuple(normalized))
    response = _apply(allowlist, change, check)
    if after is not None:
        try:
            after(change, response)
        except Exception:
            logger.exception("allowlist after-hook failed for %s %s", op, change.path_strings())
    return _answer(response, change, applied=isinstance(response, Ok))


def _apply(allowlist: Allowlist, change: AllowlistChange, check: CheckHook | None) -> Response:
    """Vet the change with ``check`` (failing closed if it raises), then apply it atomically."""
    if check is not None:
        try:
            reason = check(change)
        except Exception:
            logger.exception(
                "allowlist check-hook failed, refusing %s %s", change.op, change.path_strings()
            )
            return Err(f"{_FAILED[change.op]}: the policy check failed")
        if reason is not None:
            logger.warning(
                "allowlist: refused %s %s: %s",
                change.op,
                change.path_strings(),
                reason,
                extra={"op": change.op, "paths": list(change.path_strings()), "reason": reason},
            )
            return Err(reason or f"{_FAILED[change.op]}: refused by policy")
    try:
        if change.op == "add":
            allowlist.add(change.paths)
        else:
            allowlist.remove(change.paths)
    except UpdateError as exc:
        logger.warning("allowlist: %s %s failed: %s", change.op, change.path_strings(), exc)
        return Err(f"{_FAILED[change.op]}: {exc}")
    logger.info(
        "allowlist: %s %s",
        change.op,
        change.path_strings(),
        extra={"op": change.op, "paths": list(change.path_strings())},
    )
    return Ok()


def _refuse(problem: str) -> Outcome:
    logger.warning("allowlist: invalid request: %s", problem)
    return _answer(Err(f"invalid request: {problem}"))


def _answer(
    response: Response, change: AllowlistChange | None = None, *, applied: bool = False
) -> Outcome:
    return Outcome(response, encode_response(response), change, applied)
