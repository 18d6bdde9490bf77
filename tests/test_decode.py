"""decode_event over every kind of bad input the agent can meet, and its explicit limits."""

from __future__ import annotations

import json

import pytest

from agent.config import EventFormat
from agent.decode import MAX_INT_DIGITS, MAX_NESTING, DeadLetterReason, DecodedEvent, Rejected, decode_event
from exporters.dead_letters import DETAIL_MAX_CHARS


def decode(
    value: bytes | None,
    *,
    format: EventFormat = EventFormat.JSON,
    text_field: str = "text",
    max_bytes: int = 1024,
    timestamp_ms: int | None = 1_700_000_000_000,
) -> DecodedEvent | Rejected:
    return decode_event(
        value, format=format, text_field=text_field, max_bytes=max_bytes, timestamp_ms=timestamp_ms
    )


def rejected(result: DecodedEvent | Rejected) -> Rejected:
    assert isinstance(result, Rejected), result
    return result


def test_json_event_yields_text_other_fields_and_timestamp() -> None:
    result = decode(b'{"text": "disk full on /var", "host": "db-1", "level": "ERROR"}')
    assert result == DecodedEvent(
        text="disk full on /var", fields={"host": "db-1", "level": "ERROR"}, timestamp_ms=1_700_000_000_000
    )


def test_nested_dotted_path_removes_only_the_leaf_from_fields() -> None:
    value = b'{"message": {"text": "segfault in worker", "pid": 42}, "host": "a"}'
    result = decode(value, text_field="message.text")
    assert isinstance(result, DecodedEvent)
    assert result.text == "segfault in worker"
    assert result.fields == {"message": {"pid": 42}, "host": "a"}


def test_literal_dotted_key_wins_and_numeric_parts_index_arrays() -> None:
    """Same path rules as training (agent.decode.lookup_field), so both read the same text."""
    result = decode(b'{"log.message": "literal", "log": {"message": "nested"}}', text_field="log.message")
    assert isinstance(result, DecodedEvent)
    assert result.text == "literal"
    assert result.fields == {"log": {"message": "nested"}}

    value = b'{"entries": [{"msg": "first"}, {"msg": "second", "n": 2}], "host": "h"}'
    result = decode(value, text_field="entries.1.msg")
    assert isinstance(result, DecodedEvent)
    assert result.text == "second"
    assert result.fields == {"entries": [{"msg": "first"}, {"n": 2}], "host": "h"}
    assert rejected(decode(value, text_field="entries.5.msg")).reason is DeadLetterReason.MISSING_TEXT


def test_number_text_is_used_as_its_json_text() -> None:
    assert isinstance(result := decode(b'{"text": 404}'), DecodedEvent)
    assert result.text == "404"
    assert isinstance(result := decode(b'{"text": 2.5}'), DecodedEvent)
    assert result.text == "2.5"


def test_text_format_takes_the_whole_value() -> None:
    result = decode("plain log line ✓".encode(), format=EventFormat.TEXT)
    assert result == DecodedEvent(text="plain log line ✓", fields={}, timestamp_ms=1_700_000_000_000)


def test_text_format_does_not_parse_json() -> None:
    result = decode(b"[1, 2", format=EventFormat.TEXT)
    assert isinstance(result, DecodedEvent)
    assert result.text == "[1, 2"


@pytest.mark.parametrize("timestamp_ms", [None, -1])
def test_unavailable_timestamp_becomes_none(timestamp_ms: int | None) -> None:
    result = decode(b'{"text": "x"}', timestamp_ms=timestamp_ms)
    assert isinstance(result, DecodedEvent)
    assert result.timestamp_ms is None


def test_non_utf8_bytes() -> None:
    result = rejected(decode(b'{"text": "caf\xe9"}'))
    assert result.reason is DeadLetterReason.INVALID_UTF8
    assert "byte offset 13" in result.detail  # after `{"text": "caf`


def test_non_utf8_bytes_in_text_format() -> None:
    assert rejected(decode(b"\xff\xfe", format=EventFormat.TEXT)).reason is DeadLetterReason.INVALID_UTF8


def test_unpaired_surrogate_escape_in_text_is_invalid_utf8() -> None:
    result = rejected(decode(b'{"text": "bad \\ud800 char"}'))
    assert result.reason is DeadLetterReason.INVALID_UTF8
    assert "d800" in result.detail


def test_invalid_json() -> None:
    result = rejected(decode(b'{"text": "unterminated}'))
    assert result.reason is DeadLetterReason.INVALID_JSON
    assert "line 1" in result.detail


def test_pathologically_nested_json_is_invalid_json_not_a_crash() -> None:
    result = rejected(decode(b"[" * 100_000, max_bytes=1_000_000))
    assert result.reason is DeadLetterReason.INVALID_JSON


@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"[1, 2]", "an array"), (b'"text"', "a string"), (b"3", "a number"), (b"null", "null")],
)
def test_json_that_is_not_an_object(value: bytes, kind: str) -> None:
    result = rejected(decode(value))
    assert result.reason is DeadLetterReason.NOT_AN_OBJECT
    assert kind in result.detail


@pytest.mark.parametrize(
    ("value", "text_field", "fragment"),
    [
        (b'{"msg": "x"}', "text", "'text' not found"),
        (b'{"message": {"body": "x"}}', "message.text", "'message.text' not found"),
        (b'{"message": "flat"}', "message.text", "'message.text' not found"),
        (b'{"text": null}', "text", "null"),
        (b'{"text": true}', "text", "a boolean"),
        (b'{"text": ["a"]}', "text", "an array"),
        (b'{"text": {"a": 1}}', "text", "an object"),
    ],
)
def test_missing_or_unusable_text_field(value: bytes, text_field: str, fragment: str) -> None:
    result = rejected(decode(value, text_field=text_field))
    assert result.reason is DeadLetterReason.MISSING_TEXT
    assert fragment in result.detail


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text(text: str) -> None:
    assert rejected(decode(json.dumps({"text": text}).encode())).reason is DeadLetterReason.EMPTY_TEXT
    assert rejected(decode(text.encode(), format=EventFormat.TEXT)).reason is DeadLetterReason.EMPTY_TEXT


def test_too_large_is_checked_before_decoding() -> None:
    # Invalid UTF-8 *and* too large: the size check wins, nothing past it is looked at.
    result = rejected(decode(b"\xff" * 2000, max_bytes=1000))
    assert result.reason is DeadLetterReason.TOO_LARGE
    assert "2000 bytes" in result.detail and "1000" in result.detail


def test_value_exactly_at_the_limit_is_accepted() -> None:
    value = json.dumps({"text": "a" * 100}).encode()
    assert isinstance(decode(value, max_bytes=len(value)), DecodedEvent)
    assert rejected(decode(value, max_bytes=len(value) - 1)).reason is DeadLetterReason.TOO_LARGE


def test_tombstone() -> None:
    assert rejected(decode(None)).reason is DeadLetterReason.TOMBSTONE


def test_every_rejection_detail_fits_a_header() -> None:
    """Details are built from positions and types, never from the (possibly huge) payload."""
    big = b'{"text": ' + b'"' + b"x" * 50_000 + b"}"
    for value in (big, b"\xff" + b"a" * 50_000, b"[" + b"1," * 20_000 + b"1]"):
        result = rejected(decode(value, max_bytes=1_000_000))
        assert len(result.detail) < DETAIL_MAX_CHARS


@pytest.mark.parametrize(
    "value",
    [
        b'{"text": ' + b"9" * 5000 + b"}",
        b'{"text": "fine", "n": -' + b"1" * 5000 + b"}",
        b"1" * 5000,
    ],
    ids=["text-field", "other-field", "whole-value"],
)
def test_integer_with_too_many_digits_is_invalid_json(value: bytes) -> None:
    """Python refuses int() of > 4300 digits with ValueError, which used to crash the agent; the
    limit is now the decoder's own and gives a dead letter naming it."""
    result = rejected(decode(value, max_bytes=1_000_000))
    assert result.reason is DeadLetterReason.INVALID_JSON
    assert "5000 digits" in result.detail and str(MAX_INT_DIGITS) in result.detail


def test_integer_at_the_digit_limit_is_accepted() -> None:
    result = decode(b'{"text": "ok", "n": ' + b"7" * MAX_INT_DIGITS + b"}", max_bytes=1_000_000)
    assert isinstance(result, DecodedEvent) and result.fields["n"] == int("7" * MAX_INT_DIGITS)


def _nested(depth: int) -> bytes:
    return b'{"text": "deep", "f": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"


def test_nesting_limit_is_explicit() -> None:
    """A nested field deeper than MAX_NESTING is refused (its JSON would be re-encoded into the
    alert, recursively); the limit itself is accepted; brackets inside strings do not count."""
    assert isinstance(decode(_nested(MAX_NESTING), max_bytes=100_000), DecodedEvent)
    result = rejected(decode(_nested(MAX_NESTING + 1), max_bytes=100_000))
    assert result.reason is DeadLetterReason.INVALID_JSON and f"deeper than {MAX_NESTING}" in result.detail
    for depth in (900, 5_000, 100_000):
        assert rejected(decode(_nested(depth), max_bytes=1_000_000)).reason is DeadLetterReason.INVALID_JSON
    brackets = json.dumps({"text": "[" * 500 + "{" * 500}).encode()
    assert isinstance(decode(brackets, max_bytes=100_000), DecodedEvent)
