"""Session tracking (agent/alerts/sessions.py): windows in event time, verdicts, bounds and eviction,
transactions, the contract that verdicts do not depend on batches, aborts or restarts, and the
changelog codec."""

from __future__ import annotations

import json
import random
import re
import tracemalloc
from typing import Any

import pytest

from agent.alerts.grouping import encode_key as encode_group_key
from agent.alerts.sessions import (
    MAX_KEY_CHARS,
    ChangelogKey,
    SessionTracker,
    SessionTrackers,
    SessionVerdict,
    compile_key_pattern,
    decode_clock,
    decode_key,
    decode_session,
    encode_clock,
    encode_key,
    encode_session,
    session_key,
)
from agent.model.examples import pattern_hash
from agent.model.sessions import SessionModel, SessionSequence, SessionWindows

NAMES = ("start", "auth", "cache", "db", "retry", "done", "panic")
P = {name: pattern_hash(f"request {name} <NUM>") for name in NAMES}
GAP_MS = 30_000
WINDOWS = SessionWindows(gap_seconds=30.0, max_seconds=120.0, max_events=8)
PATHS = (("start", "auth", "db", "done"), ("start", "auth", "cache", "db", "done"))


@pytest.fixture(scope="module")
def model() -> SessionModel:
    rng = random.Random(0)
    sessions = [SessionSequence(tuple(P[n] for n in rng.choice(PATHS))) for _ in range(400)]
    return SessionModel.fit(
        sessions, windows=WINDOWS, templates={h: f"request {n} <NUM>" for n, h in P.items()}
    )


def feed(
    tracker: SessionTracker, key: str | None, name: str, at_ms: int, offset: int
) -> list[SessionVerdict]:
    return tracker.event(key, P[name], timestamp_ms=at_ms, offset=offset, text=f"request {name} 7")


def closes(verdicts: list[SessionVerdict]) -> list[tuple[str, str]]:
    return [(v.session, v.result.reason) for v in verdicts if v.kind == "close"]


# --------------------------------------------------------------------- windows in event time


def test_a_session_closes_after_the_gap_in_event_time(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0)
    assert feed(t, "a", "start", 1_000, 0) == []
    assert feed(t, "a", "auth", 1_000 + GAP_MS - 1, 1) == [], "still inside the gap"
    out = feed(t, "b", "start", 1_000 + 2 * GAP_MS, 2)  # another key's record moves the event time
    assert closes(out) == [("a", "gap")]
    assert out[0].first_offset == 0 and out[0].last_offset == 1 and out[0].result.events == 2
    assert t.event_time_ms == 1_000 + 2 * GAP_MS and "b" in t and "a" not in t


def test_records_without_a_key_move_the_event_time_too(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0)
    feed(t, "a", "start", 0, 0)
    assert closes(feed(t, None, "db", GAP_MS, 1)) == [("a", "gap")]
    assert closes(t.advance(10 * GAP_MS)) == []


def test_caps_close_sessions(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0)
    out: list[SessionVerdict] = []
    for i in range(7):  # one event every 20 s: never a gap, but 120 s after the first the cap
        out += feed(t, "a", "db", i * 20_000, i)
    assert closes(out) == [("a", "max_seconds")]
    t2 = SessionTracker(model, "events", 0)
    out = []
    for i in range(WINDOWS.max_events + 1):
        out += feed(t2, "b", "db", i, i)
    assert closes(out) == [("b", "max_events")], "the 8th event closes it at once"
    restarted = t2.get("b")
    assert restarted is not None and restarted.state.events == 1


def test_out_of_order_events_within_the_gap_join_their_session_and_late_ones_are_counted(
    model: SessionModel,
) -> None:
    t = SessionTracker(model, "events", 0)
    feed(t, "a", "start", 100_000, 0)
    feed(t, "b", "start", 120_000, 1)
    feed(t, "a", "auth", 95_000, 2)  # older than the event time, but a's session is open
    session = t.get("a")
    assert session is not None and session.state.events == 2 and session.last_ms == 100_000
    feed(t, "c", "start", 80_000, 3)  # a whole gap behind: its session would have closed already
    assert "c" not in t and t.late == 1
    feed(t, "d", "start", 100_000, 4)  # behind, but within the gap: a session of its own
    assert "d" in t
    assert closes(t.advance(100_000 + GAP_MS)) == [("a", "gap"), ("d", "gap")], "deadline, then key"


def test_due_closes_on_the_wall_clock_without_moving_event_time(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0)
    feed(t, "a", "start", 0, 0)
    assert closes(t.due(GAP_MS)) == [("a", "gap")]
    assert t.event_time_ms == 0


# --------------------------------------------------------------------- verdicts


def test_a_decisive_step_alerts_once_and_the_close_adds_no_second_alert(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 3)
    assert feed(t, "a", "start", 0, 10) == []
    out = feed(t, "a", "panic", 1, 11)
    assert [(v.kind, v.alert) for v in out] == [("decisive", True)]
    decisive = out[0]
    assert decisive.result.reason == "open" and decisive.result.is_anomaly
    doc = decisive.to_dict()
    assert doc["unexpected"][0]["template"] == "request panic 7", "an unknown pattern keeps its text"
    assert doc["sequence"] == [
        {"pattern": f"{P['start']:016x}", "count": 1, "template": "request start <NUM>"},
        {"pattern": f"{P['panic']:016x}", "count": 1, "template": "request panic 7"},
    ]
    assert feed(t, "a", "panic", 2, 12) == [], "no second decisive verdict"
    final = t.close_all()
    assert [(v.kind, v.alert, v.result.is_anomaly, v.result.decisive) for v in final] == [
        ("close", False, True, True)
    ]
    assert final[0].result.signature == decisive.result.signature
    assert final[0].to_dict()["sequence"][1]["count"] == 2, "runs deduplicate repeats"


def test_an_anomalous_close_alerts_and_a_normal_one_does_not(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0)
    for i, name in enumerate(("start", "auth", "db")):  # never done
        feed(t, "cut", name, i, i)
    for i, name in enumerate(PATHS[0]):
        feed(t, "fine", name, i, 10 + i)
    out = {v.session: v for v in t.advance(10 * GAP_MS)}
    assert out["cut"].alert and out["cut"].result.is_anomaly
    assert [s["kind"] for s in out["cut"].to_dict()["unexpected"]][-1] == "end"
    assert not out["fine"].alert and not out["fine"].result.is_anomaly


def test_runs_are_bounded(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0, max_runs=3)
    for i, name in enumerate(("start", "auth", "auth", "db", "done", "db", "db")):
        feed(t, "a", name, i, i)
    (verdict,) = t.close_all()
    assert verdict.sequence == ((P["start"], 1), (P["auth"], 2), (P["db"], 1))
    assert verdict.omitted == 3 and verdict.result.events == 7


# --------------------------------------------------------------------- bounds and eviction


def test_at_most_max_open_sessions_the_one_nearest_its_deadline_is_evicted(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0, max_open=2)
    feed(t, "a", "start", 0, 0)
    feed(t, "b", "start", 10, 1)
    feed(t, "a", "auth", 20, 2)  # a is now the more recently active
    out = feed(t, "c", "start", 30, 3)
    assert closes(out) == [("b", "evicted")]
    assert out[0].result.evidence.keys() == {"step"}, "an evicted session is scored on its steps only"
    assert len(t) == 2 and "c" in t
    t1 = SessionTracker(model, "events", 0, max_open=1)
    feed(t1, "x", "start", 1_000, 0)
    assert closes(feed(t1, "y", "start", 0, 1)) == [("x", "evicted")], "never the current event's session"


def test_memory_per_open_session_is_bounded(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0, max_open=10_000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(2_000):
        for i, name in enumerate(PATHS[1][:4]):
            feed(t, f"blk_{n}", name, 0, 4 * n + i)
    t.commit()
    per_session = (tracemalloc.get_traced_memory()[0] - before) / 2_000
    tracemalloc.stop()
    assert len(t) == 2_000
    assert per_session < 3_000, per_session


# --------------------------------------------------------------------- transactions and the contract


def stream(n: int, seed: int) -> list[tuple[str | None, str, int, int]]:
    """A partition's records: keys coming and going, times mostly rising with jitter, late ones."""
    rng = random.Random(seed)
    out: list[tuple[str | None, str, int, int]] = []
    now = 0
    for offset in range(n):
        now += rng.choice((0, 500, 2_000, 9_000, 40_000))
        at = now - rng.choice((0, 0, 0, 3_000, 20_000, 35_000))
        key = None if rng.random() < 0.1 else f"k{rng.randrange(7)}"
        out.append((key, rng.choice(NAMES), at, offset))
    return out


def verdict_docs(verdicts: list[SessionVerdict]) -> list[dict[str, Any]]:
    return [v.to_dict() for v in verdicts]


def reference(model: SessionModel, records: list[tuple[str | None, str, int, int]]) -> list[dict[str, Any]]:
    t = SessionTracker(model, "events", 0, max_open=4)
    out: list[dict[str, Any]] = []
    for key, name, at, offset in records:
        out += verdict_docs(feed(t, key, name, at, offset))
    return out + verdict_docs(t.close_all())


@pytest.mark.parametrize("seed", range(6))
def test_verdicts_do_not_depend_on_batches_aborts_or_restarts(model: SessionModel, seed: int) -> None:
    records = stream(400, seed)
    expected = reference(model, records)
    rng = random.Random(100 + seed)
    changelog: dict[bytes, bytes | None] = {}
    t = SessionTracker(model, "events", 0, max_open=4)
    got: list[dict[str, Any]] = []
    position = 0
    while position < len(records):
        batch = records[position : position + rng.randint(1, 40)]
        for attempt in range(3):
            out: list[dict[str, Any]] = []
            for key, name, at, offset in batch:
                out += verdict_docs(feed(t, key, name, at, offset))
            changes = t.changes()
            assert changes == sorted(changes)
            if attempt < 2 and rng.random() < 0.3:
                t.rollback()  # the transaction aborted: the batch is redelivered
                continue
            t.commit()
            changelog.update(changes)
            got += out
            break
        else:
            raise AssertionError("unreachable")
        position += len(batch)
        if rng.random() < 0.2:  # kill -9 and restart: a fresh tracker from the changelog
            t = SessionTracker(model, "events", 0, max_open=4)
            for key_bytes, value in changelog.items():
                t.restore(key_bytes, value)
    got += verdict_docs(t.close_all())
    assert got == expected


def test_rollback_puts_sessions_time_and_late_count_back(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0, max_open=2)
    feed(t, "a", "start", 0, 0)
    feed(t, "b", "start", 1, 1)
    t.commit()
    before = (t.get("a"), t.get("b"), t.event_time_ms, t.late)
    feed(t, "a", "auth", 5, 2)
    feed(t, "c", "start", 6, 3)  # evicts one
    feed(t, "x", "start", -GAP_MS, 4)  # late
    t.advance(10 * GAP_MS)
    assert len(t) == 0 and t.late == 1
    assert t.changes(), "closes are tombstones, the clock moved"
    t.rollback()
    assert (t.get("a"), t.get("b"), t.event_time_ms, t.late) == before
    assert t.changes() == []


def test_changes_hold_tombstones_and_the_clock(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 2)
    feed(t, "a", "start", 0, 0)
    t.commit()
    feed(t, "b", "start", GAP_MS, 1)
    changes = dict(t.changes())
    assert changes[encode_key(ChangelogKey("session", "events", 2, "a"))] is None
    assert changes[encode_key(ChangelogKey("session", "events", 2, "b"))] is not None
    clock = changes[encode_key(ChangelogKey("session_clock", "events", 2, None))]
    assert decode_clock(clock or b"") == (GAP_MS, 0)
    with pytest.raises(RuntimeError, match="uncommitted"):
        t.restore(encode_key(ChangelogKey("session_clock", "events", 2, None)), encode_clock(0, 0))


def test_trackers_route_partitions_and_notice_keys_on_two_partitions(model: SessionModel) -> None:
    trackers = SessionTrackers(model)
    feed(trackers.tracker("events", 0), "a", "start", 0, 0)
    feed(trackers.tracker("events", 1), "b", "start", 0, 0)
    assert trackers.seen_elsewhere("events", 1, "a") and not trackers.seen_elsewhere("events", 0, "a")
    assert not trackers.seen_elsewhere("other", 1, "a")
    changes = trackers.changes()
    assert {p for p, _, _ in changes} == {0, 1}
    trackers.commit()
    restored = SessionTrackers(model)
    records = [(k, v) for p, k, v in changes if p == 0]
    assert restored.restore([(b"garbage", None), *records], {("events", 0)}) == 2, "garbage is skipped"
    assert restored.open_sessions() == 1 and "a" in restored.tracker("events", 0)
    assert trackers.drop_partition("events", 1) == 1 and trackers.open_sessions() == 1
    trackers.rollback()


# --------------------------------------------------------------------- keys


def test_session_keys_from_the_raw_text_or_a_field() -> None:
    pattern = compile_key_pattern(r"(blk_-?\d+)")
    assert session_key("Receiving block blk_-123 src", pattern=pattern) == "blk_-123"
    assert session_key("no block here", pattern=pattern) is None
    fields = {"trace": {"id": "abc"}, "n": 7, "flag": True, "empty": ""}
    assert session_key("x", fields, field="trace.id") == "abc"
    assert session_key("x", fields, field="n") == "7"
    assert session_key("x", fields, field="flag") is None
    assert session_key("x", fields, field="empty") is None
    assert session_key("x", fields, field="missing") is None
    long = session_key("x", {"k": "z" * 1000}, field="k")
    assert (
        long is not None
        and len(long) == MAX_KEY_CHARS
        and long != session_key("x", {"k": "z" * 999}, field="k")
    )
    with pytest.raises(ValueError, match="exactly one"):
        session_key("x", pattern=pattern, field="k")
    for bad in (r"blk_\d+", r"(a)(b)", r"(unclosed"):
        with pytest.raises(ValueError):
            compile_key_pattern(bad)
    assert isinstance(pattern, re.Pattern)


# --------------------------------------------------------------------- codec


def test_keys_round_trip_and_are_canonical() -> None:
    for key in (
        ChangelogKey("session", "t", 0, "blk_1"),
        ChangelogKey("session", "tö", 12, 'quote " and \\ and ☃'),
        ChangelogKey("session_clock", "t", 3, None),
    ):
        data = encode_key(key)
        assert decode_key(data) == key and data.isascii()
    assert encode_key(ChangelogKey("session", "t", 0, "blk_1")) == (
        b'{"kind":"session","partition":0,"session":"blk_1","topic":"t"}'
    )


@pytest.mark.parametrize(
    "data",
    [
        encode_group_key(("t", 0, "0123456789abcdef0123456789abcdef")),  # a grouping key
        b'{"kind":"session","topic":"t","partition":0,"session":"a"}',  # not sorted
        b'{"kind": "session", "partition": 0, "session": "a", "topic": "t"}',  # not compact
        b'{"kind":"session","partition":0,"topic":"t"}',
        b'{"kind":"session_clock","partition":0,"session":"a","topic":"t"}',
        b'{"kind":"group","partition":0,"topic":"t"}',
        b'{"kind":"session","partition":-1,"session":"a","topic":"t"}',
        b'{"kind":"session","partition":true,"session":"a","topic":"t"}',
        b'{"kind":"session","partition":0,"session":"","topic":"t"}',
        b"\xff\xfe",
        b"not json",
        b"[" * 100_000,
    ],
)
def test_key_decoding_refuses_anything_else(data: bytes) -> None:
    with pytest.raises(ValueError, match="session changelog key"):
        decode_key(data)


def test_sessions_round_trip_exactly(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0)
    for i, name in enumerate(("start", "panic", "panic", "auth", "db")):
        feed(t, "a", name, 1_000 + i, 7 + i)
    session = t.get("a")
    assert session is not None and session.texts
    data = encode_session(session, model.fingerprint)
    assert decode_session(data, model) == session
    assert encode_session(decode_session(data, model), model.fingerprint) == data


def test_session_decoding_refuses_garbage(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0)
    for i, name in enumerate(("start", "auth")):
        feed(t, "a", name, i, i)
    session = t.get("a")
    assert session is not None
    good = json.loads(encode_session(session, model.fingerprint))
    for change, message in (
        ({"v": 9}, "version"),
        ({"model": "0" * 16}, "session model"),
        ({"extra": 1}, "exactly the fields"),
        ({"first_offset": 5}, "out of order"),
        ({"alerted": 1}, "alerted"),
        ({"runs": [[1, 0]]}, "out of range"),
        ({"runs": [[P["start"], 1]]}, "add up"),
        ({"texts": [[1, 2]]}, "a text"),
        ({"state": {"v": 1}}, "session model state"),
    ):
        with pytest.raises(ValueError, match=message):
            decode_session(json.dumps(good | change).encode(), model)
    for data in (b"", b"[]", b"\x80"):
        with pytest.raises(ValueError, match="session changelog state"):
            decode_session(data, model)
    with pytest.raises(ValueError, match="clock"):
        decode_clock(b'{"v":1,"event_time_ms":0}')
    assert decode_clock(encode_clock(123, 4)) == (123, 4)


def test_restore_refuses_another_partitions_records(model: SessionModel) -> None:
    t = SessionTracker(model, "events", 0)
    with pytest.raises(ValueError, match="not of this partition"):
        t.restore(encode_key(ChangelogKey("session_clock", "events", 1, None)), encode_clock(0, 0))


def test_the_key_codec_writes_exactly_the_sorted_compact_json() -> None:
    """encode_key formats keys directly (a record per touched session per batch): byte for byte the
    sorted, compact, ASCII json.dumps of the key's document, escapes and non-ASCII included."""
    for topic, partition, session in [
        ("events", 0, "blk_-1"),
        ('t"\\\n', 7, "é☃\u2028\x00"),
        ("a.b-c_d", 2**40, 'k"ey'),
    ]:
        for key in (
            ChangelogKey("session", topic, partition, session),
            ChangelogKey("session_clock", topic, partition, None),
        ):
            document = {"kind": key.kind, "partition": partition, "topic": topic}
            if key.session is not None:
                document["session"] = key.session
            want = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
                "ascii"
            )
            assert encode_key(key) == want
            assert decode_key(want) == key
