"""Client message limits shared by both WebSockets: size and JSON depth, checked before parsing."""

from __future__ import annotations

import json

import pytest

from callannotate.events.limits import (
    InvalidPayload,
    MessageTooBig,
    json_depth_exceeds,
    parse_message,
)

DEEP = "[" * 30000 + "]" * 30000  # the issue's 60 kB message: RecursionError in json.loads


def test_the_issues_nested_message_is_refused_before_json_loads() -> None:
    with pytest.raises(RecursionError):
        json.loads(DEEP)  # what the handler died of
    with pytest.raises(InvalidPayload) as refused:
        parse_message(DEEP, max_bytes=64 * 1024, max_depth=32)
    assert refused.value.close_code == 1007 and refused.value.code == "invalid_payload"


@pytest.mark.parametrize(
    ("text", "depth", "too_deep"),
    [
        ('{"a": [1, {"b": []}]}', 4, False),
        ('{"a": [1, {"b": []}]}', 3, True),
        ('{"s": "[[[[[[[[[[{{{{{{"}', 1, False),  # brackets inside strings do not count
        (r'{"s": "\"[[[[[[[[[["}', 1, False),  # nor after an escaped quote
        ("[" * 33 + "]" * 33, 32, True),
        ("[" * 32 + "]" * 32, 32, False),
    ],
)
def test_depth_scan(text: str, depth: int, too_deep: bool) -> None:
    assert json_depth_exceeds(text, depth) is too_deep


def test_size_is_counted_in_utf8_bytes() -> None:
    ascii_text = json.dumps({"type": "ping", "id": "x" * 90})
    assert parse_message(ascii_text, max_bytes=len(ascii_text), max_depth=4)["type"] == "ping"
    with pytest.raises(MessageTooBig) as big:
        parse_message(ascii_text, max_bytes=len(ascii_text) - 1, max_depth=4)
    assert big.value.close_code == 1009 and big.value.code == "message_too_big"
    cyrillic = json.dumps({"id": "я" * 60}, ensure_ascii=False)  # 60 characters, 120 bytes
    with pytest.raises(MessageTooBig):
        parse_message(cyrillic, max_bytes=100, max_depth=4)


@pytest.mark.parametrize("text", ["{not json", "", '{"a": 1', '"\\ud800"x'])
def test_malformed_text_is_an_invalid_payload(text: str) -> None:
    with pytest.raises(InvalidPayload):
        parse_message(text, max_bytes=1024, max_depth=8)
