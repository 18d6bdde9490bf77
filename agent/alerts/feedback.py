"""Operator feedback: verdicts on patterns, and which patterns are muted.

A subscriber or a person decides that a pattern (the alert key: 32 lowercase hex characters) is
normal, and writes one record to the feedback topic (``[topics] feedback``)::

    key   = the pattern id (UTF-8), or "<pattern id>:<scope>" for a scope other than novelty
    value = {"pattern_id": "<32 hex>", "verdict": "normal" | "anomaly",
             "by": "<who>", "reason": "<why>", "at": "<RFC 3339>", "scope": "<scope>"}

A verdict has a **scope**: ``novelty`` (the default, and every record without ``scope``: the
pattern's own anomalous events), or ``rate`` (its spikes and silences). So an operator can say
"this message is expected" and, separately, "its bursts are expected" (a nightly batch job). The
scopes are separate records under separate keys, so compaction keeps one verdict per scope.

``anomaly-agent feedback --pattern ID --normal --by me --reason '...'`` writes exactly
that (``feedback_record``). The topic is compacted, so it keeps the latest verdict of every
pattern and every instance, after every restart, reads the same verdicts from its beginning.

A pattern whose latest verdict is ``normal`` is **muted**: its anomalous events are not alerted
(the pipeline counts them in ``anomaly_agent_alerts_muted_total``). There is no separate
"un-mark": writing the verdict ``anomaly`` (or a tombstone — a null value under the pattern's key)
un-mutes it, and with compaction it also replaces the ``normal`` record, so nothing remembers the
mute. "The latest" is the latest in the topic's offset order (what compaction keeps), not the
latest ``at``, which is informational.

Only ``pattern_id`` and ``verdict`` are required when parsing (a person writing with kcat may
leave out ``by``, ``reason`` and ``at``; they read as ""); ``feedback_record`` always writes all
five and requires a non-empty ``by``. Unknown fields are ignored (later versions may add some).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "MAX_RECORD_BYTES",
    "MAX_STRING_CHARS",
    "SCOPES",
    "Feedback",
    "FeedbackError",
    "Verdict",
    "Verdicts",
    "feedback_record",
    "parse_feedback",
]

# A verdict is a few hundred bytes; anything much larger is not one, and is refused before
# json.loads sees it (a hostile record cannot make the parser allocate or recurse much).
MAX_RECORD_BYTES = 64 * 1024
MAX_STRING_CHARS = 1000

_PATTERN_ID = re.compile(r"[0-9a-f]{32}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


class FeedbackError(ValueError):
    """A feedback record (or the arguments of one) that is not a valid verdict; the message names
    what is wrong."""


class Verdict(StrEnum):
    NORMAL = "normal"  # mute the pattern
    ANOMALY = "anomaly"  # alert on it (the default; writing it un-mutes)


_VERDICTS = frozenset(v.value for v in Verdict)
# What a verdict is about: the pattern's anomalous events, or its rate (spikes and silences).
NOVELTY = "novelty"
SCOPES = (NOVELTY, "rate")


@dataclass(frozen=True, slots=True)
class Feedback:
    """One operator verdict on one pattern. ``at``: RFC 3339 time it was given ("" if unknown)."""

    pattern_id: str
    verdict: Verdict
    by: str
    reason: str
    at: str
    # The pattern's template (the alert's pattern.template), when the writer gave it: what
    # ``train --feedback-from`` adds to the next bundle's normal data. Optional.
    template: str = ""
    scope: str = NOVELTY

    @property
    def key(self) -> str:
        """The record key: the pattern id, suffixed ``:<scope>`` for scopes other than novelty."""
        return self.pattern_id if self.scope == NOVELTY else f"{self.pattern_id}:{self.scope}"


def parse_feedback(value: bytes | None) -> Feedback | None:
    """The verdict in a feedback record's value; None for a tombstone (null value).

    Raises FeedbackError for anything else: over ``MAX_RECORD_BYTES``, not UTF-8, not JSON (or
    nested too deeply), not an object, ``pattern_id`` missing or not 32 lowercase hex, ``verdict``
    not "normal"/"anomaly", ``by``/``reason``/``at`` not strings, longer than ``MAX_STRING_CHARS``
    or holding an unpaired surrogate, ``at`` not an RFC 3339 timestamp.
    """
    if value is None:
        return None
    if len(value) > MAX_RECORD_BYTES:
        raise FeedbackError(f"feedback record is {len(value)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedbackError(f"feedback record is not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise FeedbackError("feedback record is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise FeedbackError(f"feedback record is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FeedbackError(f"feedback record must be a JSON object, got {type(doc).__name__}")
    return _validated(doc)


def feedback_record(
    pattern_id: str,
    verdict: Verdict | str,
    by: str,
    reason: str,
    at: datetime | None = None,
    template: str = "",
    scope: str = NOVELTY,
) -> tuple[bytes, bytes]:
    """The (key, value) of a feedback record, for ``anomaly-agent feedback``: key = the pattern id
    (``:<scope>`` appended outside the novelty scope), value = compact JSON with all five fields
    (and ``scope`` outside novelty), ``at`` (default: now) in UTC with milliseconds.
    Raises FeedbackError for what ``parse_feedback`` would refuse, an empty ``by``, a naive ``at``.
    To un-mark a pattern, write ``Verdict.ANOMALY``."""
    if not isinstance(by, str) or not by.strip():
        raise FeedbackError("by must name who gives the verdict")
    if at is None:
        at = datetime.now(UTC)
    elif at.tzinfo is None or at.utcoffset() is None:
        raise FeedbackError("at must be a timezone-aware datetime")
    stamp = at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc = {"pattern_id": pattern_id, "verdict": verdict, "by": by, "reason": reason, "at": stamp}
    if template:
        doc["template"] = template
    if scope != NOVELTY:
        doc["scope"] = scope
    feedback = _validated(doc)
    value = json.dumps(
        {
            "pattern_id": feedback.pattern_id,
            "verdict": feedback.verdict.value,
            "by": feedback.by,
            "reason": feedback.reason,
            "at": feedback.at,
            **({"template": feedback.template} if feedback.template else {}),
            **({"scope": feedback.scope} if feedback.scope != NOVELTY else {}),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    return feedback.key.encode("ascii"), value


def _validated(doc: dict[str, Any]) -> Feedback:
    pattern_id = doc.get("pattern_id")
    if pattern_id is None:
        raise FeedbackError("feedback record has no pattern_id")
    if not isinstance(pattern_id, str) or not _PATTERN_ID.fullmatch(pattern_id):
        raise FeedbackError(
            f"pattern_id must be 32 lowercase hex characters (an alert key), got {_show(pattern_id)}"
        )
    raw = doc.get("verdict")
    if raw is None:
        raise FeedbackError("feedback record has no verdict")
    if not isinstance(raw, str) or raw not in _VERDICTS:
        raise FeedbackError(f'verdict must be "normal" or "anomaly", got {_show(raw)}')
    verdict = Verdict(raw)
    by, reason, at, template = (_string(doc, name) for name in ("by", "reason", "at", "template"))
    scope = _string(doc, "scope") or NOVELTY
    if scope not in SCOPES:
        raise FeedbackError(f"scope must be one of {', '.join(SCOPES)}, got {_show(scope)}")
    if at:
        moment = None
        if _RFC3339.fullmatch(at):
            try:
                moment = datetime.fromisoformat(at.upper())
            except ValueError:
                moment = None
        if moment is None:
            raise FeedbackError(
                f"at must be an RFC 3339 timestamp (2026-11-22T17:49:27.412Z), got {_show(at)}"
            )
    return Feedback(
        pattern_id=pattern_id, verdict=verdict, by=by, reason=reason, at=at, template=template, scope=scope
    )


def _string(doc: dict[str, Any], name: str) -> str:
    """An optional string field ("" when absent or null), bounded and encodable."""
    value = doc.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FeedbackError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_STRING_CHARS:
        raise FeedbackError(f"{name} is {len(value)} characters, over the {MAX_STRING_CHARS}-character limit")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FeedbackError(f"{name} holds an unpaired surrogate escape") from None
    return value


def _show(value: object) -> str:
    """A bounded repr of a bad value for error messages (never the whole of a hostile string)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


class Verdicts:
    """The latest verdict of every pattern, as read from the feedback topic.

    Thread-safe: a background consumer thread calls ``apply`` while the loop calls ``is_muted``;
    both hold a lock for a dict operation only (an uncontended acquire costs well under a
    microsecond), so the loop can ask for every anomalous event.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Feedback] = {}  # by record key: pattern id[:scope]

    def apply(self, key: bytes | None, value: bytes | None) -> Feedback | None:
        """Apply one feedback-topic record, in offset order: it replaces the pattern's verdict; a
        tombstone (null value) removes it. Returns the record's verdict, None for a tombstone.

        A malformed record raises FeedbackError (count it, log it, go on): no verdict is taken
        from it. If its key is a pattern id, that pattern's earlier verdict is removed too — the
        malformed record is the latest under that key, which is all compaction will keep, so
        forgetting now makes this instance agree with one restarted later, and a pattern never
        stays muted on the strength of garbage (failing open: it alerts). A key that is missing
        or not a pattern id changes nothing; the value must name the same pattern as the key.
        """
        record_key = _record_key(key)
        if value is None:
            self._forget(record_key)
            return None
        try:
            feedback = parse_feedback(value)
            assert feedback is not None
            if feedback.key != record_key:
                raise FeedbackError(
                    f"record key {record_key} and the verdict's pattern_id {feedback.pattern_id} (scope "
                    f"{feedback.scope}) differ (the key must be the pattern id[:scope], or compaction keeps "
                    "the wrong records)"
                )
        except FeedbackError as exc:
            self._forget(record_key)
            raise FeedbackError(f"feedback for pattern {record_key} ignored: {exc}") from None
        with self._lock:
            self._latest[record_key] = feedback
        return feedback

    def is_muted(self, pattern_id: str, scope: str = NOVELTY) -> bool:
        """Whether the pattern's latest verdict in ``scope`` is ``normal``."""
        with self._lock:
            feedback = self._latest.get(pattern_id if scope == NOVELTY else f"{pattern_id}:{scope}")
        return feedback is not None and feedback.verdict is Verdict.NORMAL

    def get(self, pattern_id: str, scope: str = NOVELTY) -> Feedback | None:
        """The pattern's latest verdict in ``scope``, None when it has none."""
        with self._lock:
            return self._latest.get(pattern_id if scope == NOVELTY else f"{pattern_id}:{scope}")

    def muted(self) -> frozenset[str]:
        """The muted record keys (pattern id, ``:<scope>`` outside novelty), at this moment."""
        with self._lock:
            return frozenset(p for p, f in self._latest.items() if f.verdict is Verdict.NORMAL)

    def __len__(self) -> int:
        """How many patterns have a verdict (either one)."""
        with self._lock:
            return len(self._latest)

    def _forget(self, pattern_id: str) -> None:
        with self._lock:
            self._latest.pop(pattern_id, None)


def _record_key(key: bytes | None) -> str:
    """The pattern id[:scope] a feedback record's key names; FeedbackError when it names none."""
    if key is None:
        raise FeedbackError("feedback record has no key (it must be the pattern id)")
    try:
        text = bytes(key).decode("ascii")
    except UnicodeDecodeError:
        text = None
    pattern, _, scope = (text or "").partition(":")
    if text is None or not _PATTERN_ID.fullmatch(pattern) or (scope and scope not in SCOPES[1:]):
        raise FeedbackError(
            "feedback record key must be a pattern id (32 lowercase hex), with ':<scope>' for a "
            f"scope other than novelty, got {_show(bytes(key))}"
        )
    return text
