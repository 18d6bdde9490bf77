"""Turning a Kafka record value into the text to score, or a reason to dead-letter it.

Pure functions, no I/O: the loop calls ``decode_event`` per record and either scores the
``DecodedEvent`` or produces the original bytes to the dead-letter topic
(``exporters.dead_letters``). Every way an input can be bad maps to one ``DeadLetterReason``; the set is
closed on purpose because the reason is a Prometheus label
(``anomaly_agent_events_dead_lettered_total{reason}``) and a Kafka header operators filter on.

Checks run cheapest first and never look at more of a record than needed: size, then UTF-8, then
JSON, then the text field. A record over ``max_bytes`` is rejected before it is decoded, so an
oversized or hostile value costs one ``len()``.

Limits, so that no record's cost or shape is unbounded (each one is an ``invalid_json`` dead
letter naming the limit): an integer literal has at most ``MAX_INT_DIGITS`` digits (Python's own
limit for ``int()`` of a string, made explicit so it does not depend on the interpreter's
settings), and a document nests at most ``MAX_NESTING`` arrays/objects deep (the fields are
carried into the alert, whose JSON encoder recurses). The text's length is bounded by
``max_bytes``; masking reads at most ``agent.model.textprep.MAX_MASKED_INPUT_CHARS`` of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.config import EventFormat

MAX_INT_DIGITS = 4300
MAX_NESTING = 64


def lookup_field(record: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) for a dotted path; a literal key containing dots wins (CSV columns may have them)."""
    if path in record:
        return True, record[path]
    node: Any = record
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


class DeadLetterReason(StrEnum):
    """Why a record went to the dead-letter topic; the values are metric labels and header values."""

    TOO_LARGE = "too_large"
    """Value longer than ``events.max_bytes``."""
    INVALID_UTF8 = "invalid_utf8"
    """Value is not valid UTF-8, or its JSON text field holds an unpaired surrogate escape."""
    INVALID_JSON = "invalid_json"
    """``events.format = "json"`` and the value does not parse as JSON."""
    NOT_AN_OBJECT = "not_an_object"
    """Valid JSON that is not an object (array, string, number, ...): there is no field to read."""
    MISSING_TEXT = "missing_text"
    """The ``events.text_field`` path is absent, or its value is not a string or a number."""
    EMPTY_TEXT = "empty_text"
    """The text is empty or only whitespace: nothing to embed."""
    TOMBSTONE = "tombstone"
    """The value is null (a Kafka tombstone): a deletion marker of a compacted topic, not an event."""
    INTERNAL_ERROR = "internal_error"
    """The agent failed on this record (a bug, or input no rule foresaw): ``dlq.detail`` names the
    exception's type and the stage. The record is set aside so that it cannot stop the partition."""


@dataclass(frozen=True)
class DecodedEvent:
    """An event ready to score.

    text: the raw text (not yet masked or truncated; that is ``TextPreparation.prepare``'s job).
    fields: the event's other JSON fields with the text field removed (empty for text events);
        carried into the alert so subscribers see host, service, level, ... without a lookup.
    timestamp_ms: the Kafka record timestamp in ms since the epoch, None when the broker has none.
    """

    text: str
    fields: dict[str, Any]
    timestamp_ms: int | None


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be scored: the reason (bounded set) and a short human-readable detail."""

    reason: DeadLetterReason
    detail: str


def decode_event(
    value: bytes | None,
    *,
    format: EventFormat,
    text_field: str,
    max_bytes: int,
    timestamp_ms: int | None,
) -> DecodedEvent | Rejected:
    """Decode one record value.

    ``format`` is ``EventFormat.TEXT`` (the whole value is the text) or ``EventFormat.JSON`` (an
    object; ``text_field`` is a dotted path such as ``"message.text"`` resolved exactly as training
    resolves it, by ``lookup_field``: a literal key containing dots wins, numeric
    parts index arrays). A number at the path is accepted as ``str(number)`` (``42`` → ``"42"``);
    booleans, null, arrays and objects are MISSING_TEXT. A null value (tombstone) is rejected as
    TOMBSTONE rather than silently skipped, so what arrived is always accounted for.
    ``timestamp_ms`` is the record's timestamp; negative values (librdkafka's "not available")
    become None.

    Never raises for any input bytes.
    """
    ts = timestamp_ms if timestamp_ms is not None and timestamp_ms >= 0 else None
    if value is None:
        return Rejected(DeadLetterReason.TOMBSTONE, "record value is null (tombstone)")
    if len(value) > max_bytes:
        return Rejected(
            DeadLetterReason.TOO_LARGE, f"value is {len(value)} bytes, events.max_bytes is {max_bytes}"
        )
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(
            DeadLetterReason.INVALID_UTF8,
            f"{exc.reason} at byte offset {exc.start}: {value[exc.start : exc.end]!r}",
        )

    if format is EventFormat.TEXT:
        return _checked_text(decoded, {}, ts)

    try:
        document = _DECODER.decode(decoded)
    except json.JSONDecodeError as exc:
        return Rejected(DeadLetterReason.INVALID_JSON, f"{exc.msg} at line {exc.lineno} column {exc.colno}")
    except _TooManyDigits as exc:
        return Rejected(DeadLetterReason.INVALID_JSON, str(exc))
    except RecursionError:
        return Rejected(DeadLetterReason.INVALID_JSON, f"nested deeper than {MAX_NESTING} levels")
    if _too_deep(decoded, document):
        return Rejected(DeadLetterReason.INVALID_JSON, f"nested deeper than {MAX_NESTING} levels")
    if not isinstance(document, dict):
        return Rejected(
            DeadLetterReason.NOT_AN_OBJECT, f"top-level JSON value is {_json_type(document)}, not an object"
        )

    found, node = lookup_field(document, text_field)
    if not found:
        return Rejected(DeadLetterReason.MISSING_TEXT, f"field {text_field!r} not found")
    if isinstance(node, str):
        text = node
    elif isinstance(node, int | float) and not isinstance(node, bool):
        text = str(node)  # as TextPreparation.extract does at training time
    else:
        return Rejected(
            DeadLetterReason.MISSING_TEXT,
            f"field {text_field!r} is {_json_type(node)}, expected a string or a number",
        )
    return _checked_text(text, _without(document, text_field), ts)


class _TooManyDigits(ValueError):
    pass


def _bounded_int(literal: str) -> int:
    digits = len(literal) - literal.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _TooManyDigits(f"an integer has {digits} digits, more than the limit of {MAX_INT_DIGITS}")
    return int(literal)


_DECODER = json.JSONDecoder(parse_int=_bounded_int)


def _too_deep(raw: str, document: Any) -> bool:
    """Whether ``document`` nests deeper than ``MAX_NESTING``. Free for ordinary events: a text
    with fewer brackets than the limit cannot nest that deep, so only those are walked."""
    if raw.count("{") + raw.count("[") <= MAX_NESTING:
        return False
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_NESTING:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _checked_text(text: str, fields: dict[str, Any], ts: int | None) -> DecodedEvent | Rejected:
    if not text.strip():
        return Rejected(DeadLetterReason.EMPTY_TEXT, "text is empty or whitespace only")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Only reachable from JSON: a "\ud800" escape is valid JSON syntax but not a character;
        # the tokenizer and every UTF-8 sink downstream would choke on it.
        return Rejected(
            DeadLetterReason.INVALID_UTF8,
            f"text has an unpaired surrogate escape \\u{ord(text[exc.start]):04x} at character {exc.start}",
        )
    return DecodedEvent(text=text, fields=fields, timestamp_ms=ts)


def _without(document: dict[str, Any], text_field: str) -> dict[str, Any]:
    """A copy of ``document`` minus the value ``lookup_field`` found; only the containers along
    the path are copied, the input is never modified."""
    top = dict(document)
    if text_field in top:
        del top[text_field]
        return top
    parts = text_field.split(".")
    node: Any = top
    for part in parts[:-1]:
        key: str | int = int(part) if isinstance(node, list) else part
        child = node[key]
        child = list(child) if isinstance(child, list) else dict(child)
        node[key] = child
        node = child
    if isinstance(node, list):
        del node[int(parts[-1])]
    else:
        del node[parts[-1]]
    return top


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
