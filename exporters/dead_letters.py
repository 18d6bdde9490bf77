"""The dead-letter copy of a record the agent cannot score: original bytes plus ``dlq.*`` headers,
cut down when it would not fit the producer's or the topic's record size limit.

The copy carries the original key, value and headers unchanged, so a fixed record can be
replayed with its metadata, and appends ``dlq.reason``, ``dlq.detail``, ``dlq.source.topic``,
``dlq.source.partition``, ``dlq.source.offset`` and (when known) ``dlq.agent``. Kafka headers may
repeat; a record dead-lettered twice (replayed and rejected again) keeps both sets, and the *last*
``dlq.*`` header of a name is the current one.

A copy that would exceed ``max_bytes`` (the smallest of the producer's ``message.max.bytes`` and
the dead-letter topic's ``max.message.bytes``, minus framing) could never be produced: its
transaction would fail on every retry and the partition would stall. Such a copy is cut down
instead, in this order, and says so in headers: the value keeps its first bytes
(``dlq.value.bytes`` = original length, ``dlq.value.truncated`` = ``true``); if that is not
enough, the original headers are dropped (``dlq.headers.dropped`` = how many); then the key is
cut (``dlq.key.bytes``, ``dlq.key.truncated``). The source coordinates always stay, so the full
record can be fetched from the input topic while retention keeps it.

Header names that are not valid UTF-8 cannot be read through confluent-kafka at all: its
``Message.headers()`` returns a list holding a NULL *with the UnicodeDecodeError still set* and
caches that list in the message. Called the ordinary way, CPython's specialising interpreter
soon skips the result check for the call site (after a few calls), so the pending exception
escapes later, anywhere — and a second call returns the cached list, whose NULL segfaults the
process. ``read_headers`` therefore calls it through ``operator.methodcaller`` (the generic call
path always checks the result, so the failure is a ``SystemError`` right there), exactly once per
record, and turns any failure into "no headers" plus ``dlq.headers.unreadable``.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import Message

from agent.decode import DeadLetterReason

# Bounded so a dead-letter header never carries (a large part of) the payload it describes.
DETAIL_MAX_CHARS = 300
# Room left for Kafka's record and batch framing under a size limit (the v2 record overhead is
# under 100 bytes; a batch adds 61).
FRAMING_BYTES = 1024

Header = tuple[str, bytes]


@dataclass(frozen=True)
class OriginalHeaders:
    """A consumed record's headers as far as they could be read; ``problem`` says why not."""

    headers: list[Header]
    problem: str | None = None


_HEADERS = operator.methodcaller("headers")


def read_headers(msg: Message) -> OriginalHeaders:
    """The record's headers, reading ``Message.headers()`` once (see the module docstring)."""
    try:
        raw = _HEADERS(msg)
    except Exception as exc:  # SystemError for undecodable names; nothing else is known to occur
        return OriginalHeaders([], f"{type(exc).__name__}: header names are not valid UTF-8")
    return OriginalHeaders(normalise_headers(raw))


def normalise_headers(
    raw: Mapping[str, bytes | str | None] | Sequence[tuple[str, bytes | str | None]] | None,
) -> list[Header]:
    """Headers as ``(name, bytes)``: a null value becomes ``b""`` (accepted by every producer)."""
    headers: list[Header] = []
    pairs = raw.items() if isinstance(raw, Mapping) else (raw or ())
    for name, value in pairs:
        if value is None:
            headers.append((name, b""))
        elif isinstance(value, str):
            headers.append((name, value.encode("utf-8", "surrogateescape")))
        else:
            headers.append((name, bytes(value)))
    return headers


@dataclass(frozen=True)
class DeadLetter:
    """A ready-to-produce dead-letter copy."""

    key: bytes | None
    value: bytes | None
    headers: list[Header]


def headers_size(headers: Sequence[Header]) -> int:
    """Bytes the headers add to a record: names (UTF-8) and values, plus a few varint bytes each."""
    return sum(len(name.encode("utf-8", "surrogateescape")) + len(value) + 4 for name, value in headers)


def record_size(key: bytes | None, value: bytes | None, headers: Sequence[Header]) -> int:
    return len(key or b"") + len(value or b"") + headers_size(headers)


def dead_letter_headers(
    *,
    reason: DeadLetterReason,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    instance_id: str | None = None,
) -> list[Header]:
    """The agent's own ``dlq.*`` headers (``detail`` cut to ``DETAIL_MAX_CHARS``)."""
    if len(detail) > DETAIL_MAX_CHARS:
        detail = detail[: DETAIL_MAX_CHARS - 1] + "…"
    headers = [
        ("dlq.reason", str(reason).encode()),
        ("dlq.detail", detail.encode("utf-8", "replace")),
        ("dlq.source.topic", topic.encode("utf-8", "replace")),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
    ]
    if instance_id is not None:
        headers.append(("dlq.agent", instance_id.encode("utf-8", "replace")))
    return headers


def build_dead_letter(
    *,
    key: bytes | None,
    value: bytes | None,
    original: OriginalHeaders,
    ours: list[Header],
    max_bytes: int,
) -> DeadLetter:
    """The copy of a record (``ours`` from ``dead_letter_headers``), cut down to ``max_bytes``."""
    ours = list(ours)
    if original.problem is not None:
        ours.append(("dlq.headers.unreadable", original.problem.encode("utf-8", "replace")))
    headers = original.headers
    if record_size(key, value, headers + ours) <= max_bytes:
        return DeadLetter(key, value, headers + ours)

    if value is not None:
        ours += [("dlq.value.bytes", str(len(value)).encode()), ("dlq.value.truncated", b"true")]
    room = max_bytes - record_size(key, None, headers + ours)
    if room < 0 and headers:
        ours.append(("dlq.headers.dropped", str(len(headers)).encode()))
        headers = []
        room = max_bytes - record_size(key, None, ours)
    if room < 0 and key:
        ours += [("dlq.key.bytes", str(len(key)).encode()), ("dlq.key.truncated", b"true")]
        key = key[: max(0, max_bytes - headers_size(ours))]
        room = max_bytes - record_size(key, None, ours)
    cut = None if value is None else value[: max(0, room)]
    return DeadLetter(key, cut, headers + ours)
