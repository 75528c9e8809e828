"""The allowlist control protocol: JSON documents as crosvm's serde types encode them (pure).

crosvm (``vm_control``) derives serde on two enums with no attributes, so they use serde's
*externally tagged* form and ``serde_json::to_vec`` writes them compactly, one document per
SOCK_SEQPACKET packet::

    {"AddPaths":{"paths":["/a","/b"]}}     {"RemovePaths":{"paths":["/a"]}}
    "Ok"                                   {"Err":"Failed to add one or more paths"}

fsd adds one request and one response that crosvm does not have, kept apart from crosvm's
variants so that a crosvm client never sees them: ``"ListPaths"`` (a unit variant) answered by
``{"Paths":["/a","/b"]}``.

Decoding is strict where cattrs and Python's json are lenient by default: no coercion
(``[1]`` is not ``["1"]``, ``"abc"`` is not a list), no unknown variants or fields, no
duplicate keys, no NaN/Infinity, UTF-8 only. Each error says what is wrong and where, as a
JSON path (``expected a string, got int @ $.AddPaths.paths[0]``).
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import attrs
import cattrs
from cattrs.errors import IterableValidationError, IterableValidationNote
from cattrs.v import format_exception as _cattrs_format_exception

MAX_PACKET = 1 << 20
"""Largest request accepted, in bytes (crosvm has no limit; 1 MiB is ~50k paths)."""


@attrs.frozen
class AddPaths:
    """crosvm ``FsAllowlistCommand::AddPaths``: allow these paths and their subtrees."""

    paths: tuple[str, ...]


@attrs.frozen
class RemovePaths:
    """crosvm ``FsAllowlistCommand::RemovePaths``: revoke these explicitly added paths."""

    paths: tuple[str, ...]


@attrs.frozen
class ListPaths:
    """fsd extension, sent as ``"ListPaths"``: ask for the explicitly added paths."""


@attrs.frozen
class Ok:
    """crosvm ``FsAllowlistResponse::Ok``, sent as ``"Ok"``."""


@attrs.frozen
class Err:
    """crosvm ``FsAllowlistResponse::Err(String)``, sent as ``{"Err":"..."}``."""

    message: str


@attrs.frozen
class Paths:
    """fsd extension, the answer to ``ListPaths``: ``{"Paths":["/a"]}``, sorted."""

    paths: tuple[str, ...]


CrosvmRequest: TypeAlias = AddPaths | RemovePaths
Request: TypeAlias = AddPaths | RemovePaths | ListPaths
Response: TypeAlias = Ok | Err | Paths


class ProtocolError(ValueError):
    """A packet that is not a valid document of the expected type; the message says where."""


# A document is a tagged object ({"Tag": payload}) or, for unit variants, the bare tag string.
_REQUEST_STRUCTS: dict[str, type[AddPaths | RemovePaths]] = {
    "AddPaths": AddPaths,
    "RemovePaths": RemovePaths,
}
_REQUEST_UNITS: dict[str, type[ListPaths]] = {"ListPaths": ListPaths}


def _strict_str(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {_json_type(value)}")
    return value


def _strict_str_list(value: Any, type_: Any) -> tuple[str, ...]:
    if type(value) is not list:
        raise TypeError(f"expected a list of strings, got {_json_type(value)}")
    errors: list[Exception] = []
    for index, item in enumerate(value):
        if type(item) is not str:
            error = TypeError(f"expected a string, got {_json_type(item)}")
            error.add_note(IterableValidationNote(f"@ index {index}", index, str))
            errors.append(error)
    if errors:
        raise IterableValidationError("invalid list of strings", errors, type_)
    return tuple(value)


def _format_exception(exc: BaseException, type_: type | None) -> str:
    """Keep our own precise messages; let cattrs word the ones it raises itself."""
    if isinstance(exc, TypeError | ProtocolError):
        return str(exc)
    return _cattrs_format_exception(exc, type_)


_converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
_converter.register_structure_hook(str, _strict_str)
_converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _strict_str_list)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "bool", int: "int"}
    return names.get(type(value), type(value).__name__ if value is not None else "null")


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"invalid JSON: {name} is not a JSON number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()  # linear: a 1 MiB object of keys must not cost minutes
        for key, _ in pairs:
            if key in seen:
                raise ProtocolError(f"invalid JSON: duplicate key {key!r}")
            seen.add(key)
    return obj


def load_json(packet: bytes) -> Any:
    """Parse one JSON document strictly (UTF-8, no NaN, no duplicate keys, no trailing data)."""
    try:
        text = packet.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid JSON: not UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int literals over Python's digit limit
        raise ProtocolError(f"invalid JSON: {exc}") from None


def _decode_tagged(
    doc: Any,
    structs: dict[str, type[Any]],
    units: dict[str, type[Any]],
    newtypes: dict[str, tuple[type[Any], type[Any]]],
) -> Any:
    """Decode serde's externally tagged enum form into one of the given variant classes."""
    names = sorted([*structs, *units, *newtypes])
    expected = f"expected one of {', '.join(names)}"
    if type(doc) is str:
        if doc in units:
            return units[doc]()
        if doc in structs or doc in newtypes:
            raise ProtocolError(f'{doc} needs a value, send it as {{"{doc}": ...}} @ $')
        raise ProtocolError(f"unknown variant {doc!r}, {expected} @ $")
    if type(doc) is not dict or len(doc) != 1:
        shape = f"an object with {len(doc)} keys" if type(doc) is dict else _json_type(doc)
        raise ProtocolError(f'{expected} as {{"Variant": ...}}, got {shape} @ $')
    ((tag, payload),) = doc.items()
    where = f"$.{tag}"
    if tag in units:
        raise ProtocolError(f"{tag} takes no fields, send it as the string {json.dumps(tag)} @ $")
    try:
        if tag in newtypes:
            cls, field = newtypes[tag]
            return cls(_converter.structure(payload, field))
        if tag in structs:
            if type(payload) is not dict:
                raise ProtocolError(f"expected an object, got {_json_type(payload)} @ {where}")
            return _converter.structure(payload, structs[tag])
    except cattrs.BaseValidationError as exc:
        details = cattrs.transform_error(exc, path=where, format_exception=_format_exception)
        raise ProtocolError("; ".join(details)) from None
    except TypeError as exc:
        raise ProtocolError(f"{exc} @ {where}") from None
    raise ProtocolError(f"unknown variant {tag!r}, {expected} @ $")


def decode_request(packet: bytes) -> Request:
    """Decode one request packet; raises ``ProtocolError`` saying what is wrong and where."""
    doc = load_json(packet)
    request: Request = _decode_tagged(doc, _REQUEST_STRUCTS, _REQUEST_UNITS, {})
    return request


def decode_response(packet: bytes) -> Response:
    """Decode one response packet (the client side); raises ``ProtocolError``."""
    doc = load_json(packet)
    response: Response = _decode_tagged(
        doc, {}, {"Ok": Ok}, {"Err": (Err, str), "Paths": (Paths, tuple[str, ...])}
    )
    return response


def _dump(doc: object) -> bytes:
    """Compact JSON as serde_json writes it: no spaces, raw UTF-8, lowercase ``\\u00xx``."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "backslashreplace"
    )


def encode_request(request: Request) -> bytes:
    """The packet for a request, byte-identical to what crosvm's serde_json would send."""
    if isinstance(request, ListPaths):
        return _dump("ListPaths")
    return _dump({type(request).__name__: {"paths": list(request.paths)}})


def encode_response(response: Response) -> bytes:
    """The packet for a response: ``"Ok"``, ``{"Err":"..."}`` or ``{"Paths":[...]}``."""
    if isinstance(response, Ok):
        return b'"Ok"'
    if isinstance(response, Err):
        return _dump({"Err": response.message})
    return _dump({"Paths": list(response.paths)})
