"""Sessions offline (training/sessions.py): events from records, labels, cutting sessions as the
agent does, fitting with labels, scoring exactly as the agent decides, and the figures."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.alerts.sessions import SessionTracker
from agent.model.sessions import SessionModel, SessionWindows
from agent.model.textprep import TextPreparation
from training.records import InputError, Record
from training.sessions import (
    SessionEvent,
    cut_sessions,
    evaluate_sessions,
    fit_sessions,
    read_session_labels,
    score_sessions,
    session_events,
)

WINDOWS = SessionWindows(gap_seconds=60.0, max_seconds=3_600.0, max_events=20)
STEPS = ("start request", "auth ok for user 42", "db query took 12 ms", "done status 200")


def request_log(n: int, *, broken: dict[int, list[str]] | None = None, seed: int = 0) -> list[Record]:
    """JSON-like records of ``n`` interleaved requests (``req-<i>`` in the text, 2 s per step,
    requests 3 s apart); ``broken`` replaces some requests' steps."""
    rng = random.Random(seed)
    timed: list[tuple[int, str]] = []
    for i in range(n):
        steps = (broken or {}).get(i, list(STEPS))
        for j, step in enumerate(steps):
            timed.append((i * 3_000 + j * 2_000 + rng.randrange(100), f"req-{i} {step}"))
    timed.sort()
    return [Record(line, {"text": text, "ts": at}) for line, (at, text) in enumerate(timed, start=1)]


def events_of(records: list[Record]) -> list[SessionEvent]:
    return session_events(
        records, TextPreparation(), Path("log.jsonl"), key_pattern=r"(req-\d+)", time_field="ts"
    )


def test_events_carry_key_pattern_and_time() -> None:
    records = [
        Record(1, {"text": "req-1 start request", "ts": 5}),
        Record(2, {"text": "no key here", "ts": "2026-01-01T00:00:01Z"}),
        Record(3, {"text": "req-2 start request"}),
    ]
    events = events_of(records)
    assert [e.key for e in events] == ["req-1", None, "req-2"]
    assert events[0].pattern == events[2].pattern, "the key is masked out of the pattern"
    assert events[1].timestamp_ms == 1_767_225_601_000 and events[2].timestamp_ms is None
    by_field = session_events(
        [Record(1, {"text": "x", "trace": {"id": "t1"}})], TextPreparation(), Path("f"), key_field="trace.id"
    )
    assert by_field[0].key == "t1"
    with pytest.raises(InputError, match="line 1: time field"):
        events_of([Record(1, {"text": "req-1 x", "ts": "yesterday"})])
    with pytest.raises(InputError, match="exactly one"):
        session_events(records, TextPreparation(), Path("f"))
    with pytest.raises(InputError, match="one group"):
        session_events(records, TextPreparation(), Path("f"), key_pattern=r"req-\d+")


def test_labels_csv(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("BlockId,Label\nblk_1,Normal\nblk_2,Anomaly\n\n", encoding="utf-8")
    assert read_session_labels(path) == {"blk_1": False, "blk_2": True}
    path.write_text("BlockId,Label\nblk_1,Weird\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2"):
        read_session_labels(path)
    path.write_text("BlockId,Label\nblk_1,Normal\nblk_1,Normal\n", encoding="utf-8")
    with pytest.raises(InputError, match="twice"):
        read_session_labels(path)
    with pytest.raises(InputError, match="session labels"):
        read_session_labels(tmp_path / "missing.csv")


def test_sessions_are_cut_as_the_tracker_cuts_them() -> None:
    records = request_log(30)
    records.append(Record(len(records) + 1, {"text": "req-0 done status 200", "ts": 10**7}))  # a new session
    events = events_of(records)
    cut = cut_sessions(events, WINDOWS)
    assert len(cut) == 31 and sum(1 for s in cut if s.key == "req-0") == 2
    assert all(len(s.sequence.patterns) == 4 for s in cut if s.first_line < len(records))
    assert {s.sequence.reason for s in cut} == {"gap", "end_of_input"}
    tracker = SessionTracker(SessionModel.blank(WINDOWS), "t", 0)
    closed = []
    for e in events:
        closed += [
            v
            for v in tracker.event(e.key, e.pattern, timestamp_ms=e.timestamp_ms or 0, offset=e.line)
            if v.kind == "close"
        ]
    closed += tracker.close_all()
    assert [(v.session, v.first_offset, v.last_offset, v.result.reason) for v in closed] == [
        (s.key, s.first_line, s.last_line, s.sequence.reason) for s in cut
    ]


def test_fit_score_and_evaluate_a_request_log() -> None:
    broken = {
        300: ["start request", "auth ok for user 42", "db query took 12 ms"],  # never done
        301: [
            "start request",
            "db query took 12 ms",
            "auth ok for user 42",
            "done status 200",
        ],  # out of order
        302: ["start request", "auth ok for user 42", "kernel panic at 0xdeadbeef", "done status 200"],
    }
    records = request_log(320, broken=broken)
    events = events_of(records)
    labels = {f"req-{i}": i in broken for i in range(320)}
    model, summary = fit_sessions(events, windows=WINDOWS, labels=labels, validation_fraction=0.2)
    assert summary["anomalous_keys"] == 3 and summary["fit_sessions"] == round(317 * 0.8)
    assert summary["validation"]["recall"] == 1.0 and summary["validation"]["false_positive_rate"] == 0.0
    rows = score_sessions(model, events)
    assert len(rows) == 320
    assert set(rows[0]) == {
        "session",
        "score",
        "is_anomaly",
        "events",
        "first_line",
        "last_line",
        "reason",
        "decisive",
        "alerted_line",
        "signature",
        "unexpected",
    }
    flagged = {r["session"]: r for r in rows if r["is_anomaly"]}
    assert set(flagged) == {"req-300", "req-301", "req-302"}
    assert flagged["req-302"]["decisive"] and flagged["req-302"]["alerted_line"] is not None
    assert flagged["req-301"]["decisive"] and not flagged["req-300"]["decisive"]
    assert flagged["req-300"]["unexpected"][-1]["kind"] == "end"
    assert flagged["req-300"]["unexpected"][-1]["expected_template"] == "req-<NUM> done status <NUM>"
    assert rows[-1]["reason"] == "end_of_input", "the input's last sessions close at its end"
    figures = evaluate_sessions(rows, labels)
    assert figures["auroc"] == 1.0 and figures["f1"] == 1.0
    assert figures["decisive_share"] == pytest.approx(2 / 3), (
        "panic and db-before-auth are decisive, the end is not"
    )
    assert figures["counts"]["anomalous"] == 3 and figures["unlabelled_keys"] == 0


def test_scoring_does_not_depend_on_the_batching_offline() -> None:
    records = request_log(200, broken={150: ["start request", "auth ok for user 42"]})
    events = events_of(records)
    model, _ = fit_sessions(events, windows=WINDOWS, validation_fraction=0.0)
    rows = score_sessions(model, events)
    tracker = SessionTracker(model, "t", 0)
    again = []
    for e in events:
        again += [
            v
            for v in tracker.event(
                e.key, e.pattern, timestamp_ms=e.timestamp_ms or 0, offset=e.line, text=e.prepared
            )
            if v.kind == "close"
        ]
        tracker.commit()
    again += tracker.close_all()
    assert [(r["session"], r["score"], r["is_anomaly"]) for r in rows] == [
        (v.session, round(v.result.score, 6), v.result.is_anomaly) for v in again
    ]


def test_fit_needs_normal_sessions() -> None:
    events = events_of(request_log(1))
    with pytest.raises(InputError, match="at least 2"):
        fit_sessions(events, windows=WINDOWS, validation_fraction=0.0)
    with pytest.raises(InputError, match="validation"):
        fit_sessions(events, windows=WINDOWS, validation_fraction=1.0)
