"""A catalogue of hostile input records, each with what the agent must make of it.

Every kind is a record the agent can meet on a real topic — written by a buggy producer, an
attacker, or a tool that knows nothing of JSON — and the fault runs found several that stopped
the agent for good (a 5,000-digit number, deep nesting, a non-UTF-8 header name, a 2 MB value,
a 200,000-character text). ``expected`` is the documented outcome: the dead-letter reason, or
``None`` for "scored" (the event is valid by the documented rules: a NaN literal is Python's JSON
extension and becomes the text "nan", a long text is masked on its first 65,536 characters), or
``ANY_REASON`` where the bytes are random and any dead-letter reason is right.

Used by tests/integration/test_hostile_records.py (each kind alone on its own partition) and by
bench/chaos.py (10,000 of them, random kinds, mixed with good events).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from agent.decode import DeadLetterReason

# The agent's events.max_bytes in these runs, and the input topic's max.message.bytes (larger, so
# that over-limit values reach the agent at all).
MAX_BYTES = 983_040
INPUT_TOPIC_MAX_MESSAGE_BYTES = 3_145_728

# (key, value, headers): headers with a bytes *name* need the raw producer (tests/raw_producer.py).
Headers = list[tuple[str, bytes]] | list[tuple[bytes, bytes]]
ANY_REASON: Final = "any"
Expected = DeadLetterReason | Literal["any"] | None


@dataclass(frozen=True)
class Hostile:
    kind: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    expected: Expected

    @property
    def raw_header_names(self) -> bool:
        return any(isinstance(name, bytes) for name, _ in self.headers)


def _event(text: object, **fields: object) -> bytes:
    return json.dumps({"text": text, **fields}).encode()


def _nested(depth: int) -> bytes:
    return b'{"text": "deep value inside", "f": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def _just_under(limit: int, valid: bool) -> bytes:
    head = b'{"text": "payment gateway timeout for order ", "pad": "'
    tail = b'"}' if valid else b'"'
    return head + b"x" * (limit - len(head) - len(tail)) + tail


INV = DeadLetterReason.INVALID_JSON
UTF = DeadLetterReason.INVALID_UTF8
MIS = DeadLetterReason.MISSING_TEXT

# kind -> (key, value, headers, expected); lambdas so that big values are built on demand.
_KINDS: dict[str, Callable[[random.Random], tuple[bytes | None, bytes | None, Headers, Expected]]] = {
    "digits_5000_text": lambda r: (None, b'{"text": ' + b"9" * 5000 + b"}", [], INV),
    "digits_5000_field": lambda r: (None, b'{"text": "ok", "n": ' + b"9" * 5000 + b"}", [], INV),
    "digits_5000_value": lambda r: (None, b"9" * 5000, [], INV),
    "nesting_900": lambda r: (None, _nested(900), [], INV),
    "nesting_100000": lambda r: (None, _nested(100_000), [], INV),
    "header_name_not_utf8": lambda r: (
        b"k",
        _event("disk full on /var"),
        [(b"\xff\xfe", b"x"), (b"ok", b"y")],
        None,
    ),
    "header_name_not_utf8_bad_value": lambda r: (b"k", b"{broken", [(b"\xc3\x28", b"x")], INV),
    "value_2mb": lambda r: (None, _event("x" * 2_000_000), [], DeadLetterReason.TOO_LARGE),
    "value_just_under_limit": lambda r: (None, _just_under(MAX_BYTES, valid=True), [], None),
    "value_just_under_limit_invalid": lambda r: (None, _just_under(MAX_BYTES, valid=False), [], INV),
    "text_200000_chars": lambda r: (None, _event("a.b+c-" * 33_334), [], None),
    "text_200000_dots": lambda r: (None, _event("1." * 100_000), [], None),
    "random_bytes": lambda r: (None, r.randbytes(r.randrange(1, 4096)), [], ANY_REASON),
    "invalid_utf8": lambda r: (None, b'{"text": "caf\xe9 \xff"}', [], UTF),
    "truncated_json": lambda r: (None, _event("cut here")[:-7], [], INV),
    "json_bom": lambda r: (None, b"\xef\xbb\xbf" + _event("bom first"), [], INV),
    "text_number": lambda r: (None, _event(404), [], None),
    "text_array": lambda r: (None, _event(["a", "b"]), [], MIS),
    "text_bool": lambda r: (None, _event(True), [], MIS),
    "text_object": lambda r: (None, _event({"nested": "x"}), [], MIS),
    "nan_literal": lambda r: (None, b'{"text": NaN, "v": Infinity}', [], None),
    "huge_float": lambda r: (None, b'{"text": "ok", "v": 1e999}', [], None),
    "lone_surrogate": lambda r: (None, b'{"text": "half \\ud800 pair"}', [], UTF),
    "control_chars": lambda r: (None, _event("bell\x07 nul\x00 esc\x1b[31m red"), [], None),
    "tombstone": lambda r: (b"deleted", None, [], DeadLetterReason.TOMBSTONE),
    "empty_value": lambda r: (None, b"", [], INV),
    "json_null": lambda r: (None, b"null", [], DeadLetterReason.NOT_AN_OBJECT),
    "binary_key": lambda r: (r.randbytes(64), _event("normal line with binary key"), [], None),
    "huge_key": lambda r: (b"k" * 600_000, b"{broken", [], INV),
    "binary_header_values": lambda r: (None, b"{broken", [("bin", r.randbytes(256)), ("null", b"")], INV),
    "many_headers": lambda r: (None, b"{broken", [(f"h{i}", b"v" * 200) for i in range(2_000)], INV),
    "duplicate_keys": lambda r: (None, b'{"text": "first", "text": "second"}', [], None),
    "emoji_only": lambda r: (None, _event("🔥" * 300), [], None),
}

KINDS: tuple[str, ...] = tuple(_KINDS)


def hostile(kind: str, rng: random.Random) -> Hostile:
    """One record of ``kind`` (random parts drawn from ``rng``)."""
    key, value, headers, expected = _KINDS[kind](rng)
    return Hostile(kind, key, value, headers, expected)


def mixed(count: int, rng: random.Random, kinds: tuple[str, ...] = KINDS) -> list[Hostile]:
    """``count`` hostile records of random kinds; the huge kinds (over 100 kB) are drawn 20 times
    less often, so that a mix of 10,000 stays a few hundred megabytes."""
    weights = [0.05 if kind in _BIG else 1.0 for kind in kinds]
    return [hostile(kind, rng) for kind in rng.choices(kinds, weights=weights, k=count)]


_BIG = frozenset(
    {"value_2mb", "value_just_under_limit", "value_just_under_limit_invalid", "huge_key", "text_200000_chars",
     "text_200000_dots", "nesting_100000", "many_headers"}
)  # fmt: skip
