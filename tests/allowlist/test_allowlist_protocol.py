"""Wire format and packet handling: byte-exact crosvm forms, strict decoding, hooks."""

import json
import logging

import pytest

from fsd.allowlist.handler import AllowlistChange, handle_packet
from fsd.allowlist.protocol import (
    AddPaths,
    Err,
    ListPaths,
    Ok,
    Paths,
    ProtocolError,
    RemovePaths,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from fsd.allowlist.trie import FULL, Allowlist


def reply(allowlist: Allowlist, packet: bytes) -> object:
    return json.loads(handle_packet(allowlist, packet).reply)


# --- codec -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "wire"),
    [
        (AddPaths(("/a", "/b")), b'{"AddPaths":{"paths":["/a","/b"]}}'),
        (RemovePaths(("/a",)), b'{"RemovePaths":{"paths":["/a"]}}'),
        (AddPaths(()), b'{"AddPaths":{"paths":[]}}'),
        (ListPaths(), b'"ListPaths"'),
    ],
)
def test_requests_round_trip_byte_exact(request_: AddPaths, wire: bytes) -> None:
    assert encode_request(request_) == wire
    assert decode_request(wire) == request_


@pytest.mark.parametrize(
    ("response", "wire"),
    [
        (Ok(), b'"Ok"'),
        (Err("Failed to add one or more paths"), b'{"Err":"Failed to add one or more paths"}'),
        (Err('q"\\\n\t\x01\x7f é'), b'{"Err":"q\\"\\\\\\n\\t\\u0001\x7f \xc3\xa9"}'),
        (Paths(("/a", "/b")), b'{"Paths":["/a","/b"]}'),
        (Paths(()), b'{"Paths":[]}'),
    ],
)
def test_responses_round_trip_byte_exact(response: Response, wire: bytes) -> None:
    """serde_json's compact form: no spaces, raw UTF-8, ``\\u00xx`` only for controls."""
    assert encode_response(response) == wire
    assert decode_response(wire) == response


def test_decode_accepts_whitespace_like_serde() -> None:
    assert decode_request(b' { "AddPaths" : { "paths" : [ "/a" ] } } \n') == AddPaths(("/a",))


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"", "invalid JSON: Expecting value"),
        (b"{", "invalid JSON"),
        (b'{"AddPaths":{"paths":[]}} x', "invalid JSON: Extra data"),
        (b'{"AddPaths":{"paths":[]}}{}', "invalid JSON: Extra data"),
        (b"\xff\xfe", "not UTF-8 at byte 0"),
        (b"NaN", "NaN is not a JSON number"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"AddPaths":{"paths":[],"paths":["/a"]}}', "duplicate key 'paths'"),
        (b'{"AddPaths":{"paths":[1]}}', "expected a string, got int @ $.AddPaths.paths[0]"),
        (b'{"AddPaths":{"paths":["/a",null]}}', "got null @ $.AddPaths.paths[1]"),
        (b'{"AddPaths":{"paths":[["/a"]]}}', "got list @ $.AddPaths.paths[0]"),
        (
            b'{"AddPaths":{"paths":"/a"}}',
            "expected a list of strings, got string @ $.AddPaths.paths",
        ),
        (b'{"AddPaths":{"paths":{"/a":1}}}', "got object @ $.AddPaths.paths"),
        (b'{"RemovePaths":{"paths":true}}', "got bool @ $.RemovePaths.paths"),
        (b'{"AddPaths":{}}', "required field missing @ $.AddPaths.paths"),
        (b'{"AddPaths":{"paths":[],"force":true}}', "extra fields found (force) @ $.AddPaths"),
        (b'{"AddPaths":null}', "expected an object, got null @ $.AddPaths"),
        (b'{"AddPaths":["/a"]}', "expected an object, got list @ $.AddPaths"),
        (b'{"Frobnicate":{}}', "unknown variant 'Frobnicate'"),
        (b'"Ok"', "unknown variant 'Ok'"),
        (b'"AddPaths"', 'send it as {"AddPaths": ...}'),
        (b'{"ListPaths":null}', 'send it as the string "ListPaths"'),
        (b'{"AddPaths":{"paths":[]},"RemovePaths":{"paths":[]}}', "object with 2 keys"),
        (b"{}", "object with 0 keys"),
        (b"42", "got int @ $"),
        (b'["AddPaths"]', "got list @ $"),
    ],
)
def test_decode_request_refuses(packet: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(packet)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b'"Okay"', "unknown variant 'Okay'"),
        (b'{"Err":5}', "expected a string, got int @ $.Err"),
        (b'{"Paths":["/a",3]}', "got int @ $.Paths[1]"),
        (b'{"Ok":null}', 'send it as the string "Ok"'),
        (b'"Err"', 'send it as {"Err": ...}'),
    ],
)
def test_decode_response_refuses(packet: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_response(packet)
    assert message in str(info.value)


# --- handling --------------------------------------------------------------------------------


def test_add_remove_list() -> None:
    allowlist = Allowlist()
    outcome = handle_packet(allowlist, b'{"AddPaths":{"paths":["/b/./c/","/a"]}}')
    assert outcome.reply == b'"Ok"'
    assert outcome.applied
    assert outcome.change == AllowlistChange("add", (("b", "c"), ("a",)))
    assert outcome.change.path_strings() == ["/b/c", "/a"]
    assert allowlist.access(("b", "c", "d")) is FULL
    assert handle_packet(allowlist, b'"ListPaths"').reply == b'{"Paths":["/a","/b/c"]}'
    outcome = handle_packet(allowlist, b'{"RemovePaths":{"paths":["/a"]}}')
    assert (outcome.reply, outcome.applied) == (b'"Ok"', True)
    assert reply(allowlist, b'"ListPaths"') == {"Paths": ["/b/c"]}


def test_empty_batches_are_ok() -> None:
    allowlist = Allowlist()
    assert handle_packet(allowlist, b'{"AddPaths":{"paths":[]}}').reply == b'"Ok"'
    assert handle_packet(allowlist, b'{"RemovePaths":{"paths":[]}}').reply == b'"Ok"'


def test_malformed_packets_answer_err_and_change_nothing() -> None:
    allowlist = Allowlist()
    allowlist.add([("keep",)])
    outcome = handle_packet(allowlist, b'{"AddPaths":{"paths":[1]}}')
    assert outcome.response == Err(
        "invalid request: expected a string, got int @ $.AddPaths.paths[0]"
    )
    assert outcome.change is None
    assert not outcome.applied
    assert allowlist.explicit_paths() == [("keep",)]


def test_oversized_and_truncated_packets_are_refused() -> None:
    allowlist = Allowlist()
    packet = b'{"AddPaths":{"paths":["/a"]}}'
    small = handle_packet(allowlist, packet, max_packet=len(packet) - 1)
    assert small.response == Err(f"invalid request: packet larger than {len(packet) - 1} bytes")
    assert handle_packet(allowlist, packet, truncated=True).response == Err(
        "invalid request: packet larger than 1048576 bytes"
    )
    assert allowlist.explicit_paths() == []


def test_add_batch_with_an_invalid_path_is_rolled_back() -> None:
    """crosvm e2e: ``/allowed/../../..`` is refused, for add and for remove."""
    allowlist = Allowlist()
    outcome = handle_packet(allowlist, b'{"AddPaths":{"paths":["/ok","/allowed/../../.."]}}')
    assert outcome.response == Err(
        "Failed to add one or more paths: path climbs above the share root: "
        "'/allowed/../../..' @ $.AddPaths.paths[1]"
    )
    assert allowlist.explicit_paths() == []
    outcome = handle_packet(allowlist, b'{"RemovePaths":{"paths":["/allowed/../../.."]}}')
    assert isinstance(outcome.response, Err)
    assert outcome.response.message.startswith("Failed to remove one or more paths: ")


def test_relative_and_nul_paths_are_refused() -> None:
    allowlist = Allowlist()
    for path in ['""', '"a/b"', '"/a\\u0000"', '"/\\ud800"']:
        packet = b'{"AddPaths":{"paths":[%s]}}' % path.encode()
        response = handle_packet(allowlist, packet).response
        assert isinstance(response, Err), path
        assert response.message.startswith("Failed to add one or more paths: ")
    assert allowlist.explicit_paths() == []


def test_remove_batch_with_an_unknown_path_is_rolled_back() -> None:
    """crosvm's listener test step 3, and its e2e ``/non_existent`` removal."""
    allowlist = Allowlist()
    handle_packet(allowlist, b'{"AddPaths":{"paths":["/a","/b"]}}')
    outcome = handle_packet(allowlist, b'{"RemovePaths":{"paths":["/a","/non_existent"]}}')
    assert outcome.response == Err(
        "Failed to remove one or more paths: /non_existent is not an added path"
    )
    assert outcome.change == AllowlistChange("remove", (("a",), ("non_existent",)))
    assert not outcome.applied
    assert allowlist.explicit_paths() == [("a",), ("b",)]


def test_disabled_allowlist_refuses_changes() -> None:
    allowlist = Allowlist.allow_all()
    response = handle_packet(allowlist, b'{"AddPaths":{"paths":["/a"]}}').response
    assert response == Err(
        "Failed to add one or more paths: the allowlist is disabled "
        "(no allowlist socket configured)"
    )
    assert reply(allowlist, b'"ListPaths"') == {"Paths": ["/"]}


# --- hooks -----------------------------------------------------------------------------------


def test_check_hook_can_veto() -> None:
    seen: list[AllowlistChange] = []

    def check(change: AllowlistChange) -> str | None:
        seen.append(change)
        return "no secrets" if ("secret",) in change.paths else None

    allowlist = Allowlist()
    packet = b'{"AddPaths":{"paths":["/pub","/x/../secret"]}}'
    outcome = handle_packet(allowlist, packet, check=check)
    assert outcome.response == Err("no secrets")
    assert not outcome.applied
    assert seen == [AllowlistChange("add", (("pub",), ("secret",)))]
    assert allowlist.explicit_paths() == []
    assert handle_packet(allowlist, b'{"AddPaths":{"paths":["/pub"]}}', check=check).applied


def test_check_hook_empty_reason_still_vetoes() -> None:
    outcome = handle_packet(Allowlist(), b'{"AddPaths":{"paths":["/a"]}}', check=lambda change: "")
    assert outcome.response == Err("Failed to add one or more paths: refused by policy")


def test_check_hook_exception_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    def check(change: AllowlistChange) -> str | None:
        raise RuntimeError("plugin bug")

    allowlist = Allowlist()
    with caplog.at_level(logging.ERROR, logger="fsd.allowlist"):
        outcome = handle_packet(allowlist, b'{"AddPaths":{"paths":["/a"]}}', check=check)
    assert outcome.response == Err("Failed to add one or more paths: the policy check failed")
    assert allowlist.explicit_paths() == []
    assert "check-hook failed" in caplog.text
    assert "plugin bug" in caplog.text


def test_after_hook_sees_every_change_and_its_answer(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[AllowlistChange, Response]] = []

    def after(change: AllowlistChange, response: Response) -> None:
        calls.append((change, response))
        raise RuntimeError("after-hook bug is only logged")

    allowlist = Allowlist()
    with caplog.at_level(logging.ERROR, logger="fsd.allowlist"):
        ok = handle_packet(allowlist, b'{"AddPaths":{"paths":["/a"]}}', after=after)
        bad = handle_packet(allowlist, b'{"RemovePaths":{"paths":["/b"]}}', after=after)
        handle_packet(allowlist, b'"ListPaths"', after=after)
        handle_packet(allowlist, b"junk", after=after)
    assert ok.reply == b'"Ok"'
    assert isinstance(bad.response, Err)
    assert calls == [
        (AllowlistChange("add", (("a",),)), Ok()),
        (AllowlistChange("remove", (("b",),)), bad.response),
    ]
    assert "after-hook failed" in caplog.text


def test_changes_and_refusals_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    allowlist = Allowlist()
    with caplog.at_level(logging.INFO, logger="fsd.allowlist"):
        handle_packet(allowlist, b'{"AddPaths":{"paths":["/a/b"]}}')
        handle_packet(allowlist, b"{")
    assert "allowlist: add ['/a/b']" in caplog.text
    assert "allowlist: invalid request: invalid JSON" in caplog.text
