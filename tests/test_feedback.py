"""Operator feedback (agent/alerts/feedback.py): parsing verdicts, the CLI's record, the muted set."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.alerts.feedback import (
    MAX_RECORD_BYTES,
    Feedback,
    FeedbackError,
    Verdict,
    Verdicts,
    feedback_record,
    parse_feedback,
)

P = "005e965e884eed92ae2d8f73696c3d9e"
Q = "fedcba9876543210fedcba9876543210"


def value(**doc: object) -> bytes:
    return json.dumps({"pattern_id": P, "verdict": "normal", **doc}).encode()


def test_parse_a_full_record() -> None:
    data = value(by="ops@example.com", reason="nightly batch job", at="2026-11-22T17:49:27.412Z", extra=1)
    assert parse_feedback(data) == Feedback(
        pattern_id=P,
        verdict=Verdict.NORMAL,
        by="ops@example.com",
        reason="nightly batch job",
        at="2026-11-22T17:49:27.412Z",
    )


def test_parse_minimal_record_and_tombstone() -> None:
    assert parse_feedback(b'{"pattern_id":"' + P.encode() + b'","verdict":"anomaly"}') == Feedback(
        P, Verdict.ANOMALY, "", "", ""
    )
    assert parse_feedback(value(by=None, reason=None, at=None)) == Feedback(P, Verdict.NORMAL, "", "", "")
    assert parse_feedback(None) is None


@pytest.mark.parametrize(
    "at", ["2026-11-22T17:49:27Z", "2026-11-22t17:49:27.123456+02:00", "2026-11-22 17:49:27z"]
)
def test_rfc3339_timestamps_are_accepted(at: str) -> None:
    feedback = parse_feedback(value(at=at))
    assert feedback is not None and feedback.at == at


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"verdict: normal", "not JSON"),
        (b"[" * 50_000, "not JSON"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "not JSON"),
        (b"1" * 5000, "not JSON"),
        (b"[]", "JSON object, got list"),
        (b'"normal"', "JSON object, got str"),
        (b'{"verdict":"normal"}', "no pattern_id"),
        (value(pattern_id=P.upper()), "32 lowercase hex"),
        (value(pattern_id=P[:-1]), "32 lowercase hex"),
        (value(pattern_id=P + "0"), "32 lowercase hex"),
        (value(pattern_id=P[:-1] + "g"), "32 lowercase hex"),
        (value(pattern_id=int(P, 16)), "32 lowercase hex"),
        (value(pattern_id=P + "\n"), "32 lowercase hex"),
        (value(verdict=None), "no verdict"),
        (value(verdict="Normal"), 'verdict must be "normal" or "anomaly"'),
        (value(verdict="mute"), 'verdict must be "normal" or "anomaly"'),
        (value(verdict=["normal"]), 'verdict must be "normal" or "anomaly"'),
        (value(by=42), "by must be a string"),
        (value(reason={"x": 1}), "reason must be a string"),
        (value(reason="x" * 1001), "reason is 1001 characters, over the 1000"),
        (value(by="x" * 1001), "by is 1001 characters"),
        (value(pattern_id="x" * 20_000), "32 lowercase hex"),
        (b'{"pattern_id":"' + P.encode() + b'","verdict":"normal","by":"\\ud800"}', "unpaired surrogate"),
        (value(at="yesterday"), "RFC 3339"),
        (value(at="2026-11-22"), "RFC 3339"),
        (value(at="2026-11-22T17:49:27"), "RFC 3339"),
        (value(at="20261122T174927Z"), "RFC 3339"),
        (value(at="2026-02-30T00:00:00Z"), "RFC 3339"),
        (value(at=1795369767412), "at must be a string"),
    ],
)
def test_invalid_records_are_refused_with_a_message_naming_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        parse_feedback(data)


def test_huge_records_are_refused_before_parsing() -> None:
    huge = value(reason="x" * MAX_RECORD_BYTES)
    with pytest.raises(FeedbackError, match=f"over the {MAX_RECORD_BYTES}-byte limit"):
        parse_feedback(huge)
    assert issubclass(FeedbackError, ValueError)


def test_error_messages_do_not_echo_hostile_values_in_full() -> None:
    with pytest.raises(FeedbackError) as info:
        parse_feedback(value(verdict="y" * 5000))
    assert len(str(info.value)) < 200


# --------------------------------------------------------------------- the record the CLI writes


def test_feedback_record_round_trips() -> None:
    at = datetime(2026, 11, 22, 18, 49, 27, 412_999, tzinfo=timezone(timedelta(hours=1)))
    key, data = feedback_record(P, Verdict.NORMAL, "me", "known batch job ☃", at=at)
    assert key == P.encode()
    assert json.loads(data) == {
        "pattern_id": P,
        "verdict": "normal",
        "by": "me",
        "reason": "known batch job ☃",
        "at": "2026-11-22T17:49:27.412Z",
    }
    assert b" " not in data.replace("known batch job ☃".encode(), b"")
    assert parse_feedback(data) == Feedback(
        P, Verdict.NORMAL, "me", "known batch job ☃", "2026-11-22T17:49:27.412Z"
    )


def test_feedback_record_defaults_to_now_and_accepts_verdict_strings() -> None:
    before = datetime.now(UTC)
    _, data = feedback_record(P, "anomaly", "me", "")
    feedback = parse_feedback(data)
    assert feedback is not None and feedback.verdict is Verdict.ANOMALY
    stamp = datetime.fromisoformat(feedback.at)
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC) + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((P, "maybe", "me", ""), "verdict"),
        (("not-a-pattern", "normal", "me", ""), "32 lowercase hex"),
        ((P, "normal", "", ""), "by must name"),
        ((P, "normal", "   ", ""), "by must name"),
        ((P, "normal", "me", "r" * 1001), "reason is 1001"),
    ],
)
def test_feedback_record_refuses_what_parsing_would(args: tuple[str, str, str, str], message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        feedback_record(*args)


def test_feedback_record_refuses_a_naive_time() -> None:
    with pytest.raises(FeedbackError, match="timezone-aware"):
        feedback_record(P, "normal", "me", "", at=datetime(2026, 1, 1))


# --------------------------------------------------------------------- the verdicts table


def record(pattern: str, verdict: str, by: str = "me") -> tuple[bytes, bytes]:
    return feedback_record(pattern, verdict, by, "why")


def test_normal_mutes_and_anomaly_unmutes() -> None:
    verdicts = Verdicts()
    assert not verdicts.is_muted(P) and len(verdicts) == 0
    applied = verdicts.apply(*record(P, "normal"))
    assert applied is not None and applied.verdict is Verdict.NORMAL
    assert verdicts.is_muted(P) and not verdicts.is_muted(Q)
    assert verdicts.muted() == {P}
    verdicts.apply(*record(P, "anomaly", by="you"))  # un-mark
    assert not verdicts.is_muted(P) and len(verdicts) == 1
    got = verdicts.get(P)
    assert got is not None and got.by == "you"
    assert verdicts.muted() == frozenset()


def test_the_latest_record_per_key_wins_and_a_tombstone_removes() -> None:
    verdicts = Verdicts()
    for key, data in [record(P, "normal"), record(Q, "normal"), record(P, "anomaly"), record(P, "normal")]:
        verdicts.apply(key, data)
    assert verdicts.muted() == {P, Q}
    assert verdicts.apply(Q.encode(), None) is None
    assert verdicts.muted() == {P} and verdicts.get(Q) is None and len(verdicts) == 1
    verdicts.apply(Q.encode(), None)  # a tombstone for an unknown pattern is fine


def test_a_malformed_record_raises_and_fails_open_for_its_key() -> None:
    verdicts = Verdicts()
    verdicts.apply(*record(P, "normal"))
    verdicts.apply(*record(Q, "normal"))
    with pytest.raises(FeedbackError, match=f"feedback for pattern {P} ignored: .*not JSON"):
        verdicts.apply(P.encode(), b"garbage")
    assert not verdicts.is_muted(P), "the garbage is P's latest record, all compaction will keep"
    assert verdicts.is_muted(Q)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "no key"),
        (b"\xff" * 32, "key must be a pattern id"),
        (P.upper().encode(), "key must be a pattern id"),
    ],
)
def test_records_without_a_pattern_key_change_nothing(key: bytes | None, message: str) -> None:
    verdicts = Verdicts()
    verdicts.apply(*record(P, "normal"))
    with pytest.raises(FeedbackError, match=message):
        verdicts.apply(key, record(P, "anomaly")[1])
    assert verdicts.is_muted(P)


def test_the_key_must_match_the_pattern_id() -> None:
    verdicts = Verdicts()
    verdicts.apply(*record(Q, "normal"))
    with pytest.raises(FeedbackError, match="differ"):
        verdicts.apply(Q.encode(), record(P, "normal")[1])
    assert verdicts.get(P) is None and not verdicts.is_muted(Q)


def test_apply_and_is_muted_from_two_threads() -> None:
    verdicts = Verdicts()
    patterns = [f"{i:032x}" for i in range(200)]
    records = [record(p, "normal" if i % 2 == 0 else "anomaly") for i, p in enumerate(patterns)]
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for _ in range(20):
                for key, data in records:
                    verdicts.apply(key, data)
                for p in patterns[::7]:
                    verdicts.apply(p.encode(), None)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads < 10_000:
        for i, p in enumerate(patterns):
            muted = verdicts.is_muted(p)
            assert not (muted and i % 2), "an odd pattern is never marked normal"
            reads += 1
        len(verdicts)
        verdicts.muted()
    thread.join()
    assert not errors
    for key, data in records:
        verdicts.apply(key, data)
    assert verdicts.muted() == set(patterns[::2])
