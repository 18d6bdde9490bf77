"""Alert grouping (agent/alerts/grouping.py): windows, summaries, undo, partitions, the bound, the codec,
and exactness across crashes — the pure logic the pipeline commits with each batch."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.alerts.grouping import (
    Decision,
    Grouper,
    GroupKey,
    GroupState,
    Summary,
    decode_key,
    decode_state,
    encode_key,
    encode_state,
)

P = "0123456789abcdef0123456789abcdef"
Q = "fedcba9876543210fedcba9876543210"
K: GroupKey = ("events", 0, P)
COOLDOWN = 10_000


def ev(n: int, **extra: Any) -> dict[str, Any]:
    return {"offset": n, "text": f"event {n}", **extra}


def decide(g: Grouper, key: GroupKey, now: int, score: float, n: int) -> Decision:
    return g.decide(key, now, score, ev(n), alert_id=f"id-{key[0]}-{key[1]}-{n}")


# --------------------------------------------------------------------- windows and summaries


def test_first_event_publishes_storm_is_counted_and_summarised_at_window_end() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    first = decide(g, K, 1_000, 2.0, 1)
    assert first == Decision(publish=True, first_seen_ms=1_000, window_start_ms=1_000)
    scores = [1.5, 3.0, 2.5, 3.0, 1.1]  # the max (3.0) twice: the first of equal scores is kept
    for i, score in enumerate(scores):
        d = decide(g, K, 1_000 + 1_000 * (i + 1), score, 10 + i)
        assert d == Decision(publish=False, first_seen_ms=1_000, window_start_ms=1_000)
    assert g.due(10_999) == [], "the window lasts cooldown_ms"
    assert g.due(11_000) == [
        Summary(
            key=K,
            window_start_ms=1_000,
            window_end_ms=11_000,
            suppressed=5,
            max_score=3.0,
            top_event=ev(11),
            first_seen_ms=1_000,
            window_alert_id="id-events-0-1",
        )
    ]
    assert g.due(50_000) == [], "a window is summarised once"
    state = g.get(K)
    assert state == GroupState(first_seen_ms=1_000, last_seen_ms=6_000), "closed, first_seen kept"


def test_window_without_suppressed_events_closes_without_summary() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    decide(g, K, 0, 2.0, 1)
    assert g.due(COOLDOWN) == []
    state = g.get(K)
    assert state is not None and state.window_start_ms is None and state.first_seen_ms == 0
    assert g.changes()[K] == state, "closing is a change the changelog must get"


def test_new_window_after_cooldown_publishes_again_with_first_seen_unchanged() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    decide(g, K, 0, 2.0, 1)
    decide(g, K, 5_000, 4.0, 2)
    g.due(COOLDOWN)
    d = decide(g, K, 30_000, 2.0, 3)
    assert d.publish and d.first_seen_ms == 0 and d.window_start_ms == 30_000 and d.summaries == ()
    assert not decide(g, K, 39_999, 2.0, 4).publish
    assert decide(g, K, 40_000, 2.0, 5).publish, "the window ends at start + cooldown exactly"


def test_an_ended_window_not_yet_collected_by_due_is_summarised_before_the_new_alert() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    decide(g, K, 0, 2.0, 1)
    decide(g, K, 1, 5.0, 2)
    d = decide(g, K, 20_000, 2.0, 3)  # no due() in between
    assert d.publish and d.window_start_ms == 20_000
    assert [(s.window_start_ms, s.window_end_ms, s.suppressed, s.max_score) for s in d.summaries] == [
        (0, COOLDOWN, 1, 5.0)
    ]
    assert g.due(25_000) == [], "and due() does not summarise it again"


def test_partitions_topics_and_patterns_are_independent() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    keys: list[GroupKey] = [("events", 0, P), ("events", 1, P), ("other", 0, P), ("events", 0, Q)]
    assert all(decide(g, key, 0, 2.0, i).publish for i, key in enumerate(keys))
    assert not any(decide(g, key, 1, 2.0, 10 + i).publish for i, key in enumerate(keys))
    decide(g, keys[1], 2, 2.0, 20)
    counts = {s.key: s.suppressed for s in g.due(COOLDOWN)}
    assert counts == {keys[0]: 1, keys[1]: 2, keys[2]: 1, keys[3]: 1}


def test_due_is_ordered_by_window_end_then_key() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    opened = [(300, ("b", 0, P)), (100, ("c", 0, P)), (300, ("a", 0, P)), (200, ("a", 1, P))]
    for n, (now, key) in enumerate(opened):
        decide(g, key, now, 2.0, n)
        decide(g, key, now + 1, 2.0, 100 + n)
    assert [(s.window_end_ms, s.key) for s in g.due(10**9)] == [
        (COOLDOWN + 100, ("c", 0, P)),
        (COOLDOWN + 200, ("a", 1, P)),
        (COOLDOWN + 300, ("a", 0, P)),
        (COOLDOWN + 300, ("b", 0, P)),
    ]


class _CountingStates(dict[GroupKey, GroupState]):
    """The grouper's state map, counting every read: a scan reads them all."""

    reads = 0

    def _count(self, n: int = 1) -> None:
        self.reads += n

    def get(self, key: GroupKey, default: Any = None) -> Any:  # type: ignore[override]
        self._count()
        return super().get(key, default)

    def __getitem__(self, key: GroupKey) -> GroupState:
        self._count()
        return super().__getitem__(key)

    def __iter__(self) -> Any:
        self._count(len(self))
        return super().__iter__()

    def values(self) -> Any:
        self._count(len(self))
        return super().values()

    def items(self) -> Any:
        self._count(len(self))
        return super().items()


def test_due_does_not_scan_the_open_windows() -> None:
    """``due`` costs nothing per open window: with 100,000 windows open and none ended it reads no
    state (it peeks at the earliest end), and it reads one per window it closes."""
    g = Grouper(cooldown_ms=10**9)
    for i in range(100_000):
        g.decide(("events", i % 8, f"{i:032x}"), i, 2.0, {}, alert_id=str(i))
    g.commit()
    states = _CountingStates(g._states)
    g._states = states
    for now in range(500):
        assert g.due(now) == []
    assert states.reads == 0
    g.due(10**9 + 2)  # the windows opened at 0, 1 and 2 end
    assert states.reads == 3


def test_stale_heap_entries_do_not_accumulate() -> None:
    g = Grouper(cooldown_ms=50)
    keys: list[GroupKey] = [("events", 0, f"{i:032x}") for i in range(10)]
    for now in range(20_000):
        key = keys[now % 10]
        g.decide(key, now, 2.0, {}, alert_id=str(now))
        g.due(now)
        if now % 100 == 0:
            g.commit()
    g.commit()
    assert len(g._lru) <= 2 * len(g) + 1024 and len(g._ends) <= 2 * len(g) + 1024


def test_invalid_arguments_are_refused_before_anything_changes() -> None:
    with pytest.raises(ValueError):
        Grouper(cooldown_ms=-1)
    with pytest.raises(ValueError):
        Grouper(max_groups=0)
    g = Grouper(cooldown_ms=COOLDOWN)
    decide(g, K, 0, 2.0, 1)
    g.commit()
    with pytest.raises(ValueError, match="NaN"):
        g.decide(K, 1, math.nan, ev(2), alert_id="x")
    with pytest.raises(ValueError, match="JSON"):
        g.decide(K, 1, 3.0, {"x": math.nan}, alert_id="x")
    with pytest.raises(ValueError, match="JSON"):
        g.decide(K, 1, 3.0, {"x": object()}, alert_id="x")
    assert g.changes() == {}


def test_the_top_event_is_stored_as_its_json_round_trip() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    decide(g, K, 0, 2.0, 1)
    event: dict[str, Any] = {"fields": {"tags": ("a", "b"), 7: "seven"}}
    g.decide(K, 1, 3.0, event, alert_id="x")
    event["fields"]["tags"] = "mutated by the caller afterwards"
    [summary] = g.due(COOLDOWN)
    assert summary.top_event == {"fields": {"tags": ["a", "b"], "7": "seven"}}


# --------------------------------------------------------------------- undo: changes/commit/rollback


def test_changes_commit_and_rollback() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    decide(g, K, 0, 2.0, 1)
    assert g.changes() == {K: GroupState(0, 0, 0, "id-events-0-1")}
    g.commit()
    assert g.changes() == {}
    before = g.snapshot()
    decide(g, K, 5, 3.0, 2)
    decide(g, ("events", 1, P), 5, 3.0, 3)
    assert set(g.changes()) == {K, ("events", 1, P)}
    g.rollback()
    assert g.snapshot() == before and g.changes() == {}
    assert decide(g, ("events", 1, P), 6, 3.0, 3).publish, "the rolled-back window is gone"
    assert not decide(g, K, 6, 3.0, 2).publish


def test_changes_leave_out_keys_that_ended_as_they_began() -> None:
    g = Grouper(cooldown_ms=COOLDOWN, max_groups=1)
    decide(g, K, 0, 2.0, 1)
    g.commit()
    decide(g, ("events", 1, P), 1, 2.0, 2)  # evicts K
    decide(g, K, 2, 2.0, 3)  # evicts ("events", 1, P), created in this batch: no tombstone needed
    assert g.changes() == {K: GroupState(2, 2, 2, "id-events-0-3")}


def _random_batch(g: Grouper, rng: random.Random, now: int, keys: list[GroupKey]) -> int:
    for _ in range(rng.randrange(0, 30)):
        now += rng.randrange(0, COOLDOWN // 4)
        if rng.random() < 0.2:
            g.due(now)
        else:
            n = rng.randrange(10**6)
            g.decide(rng.choice(keys), now, rng.uniform(1.0, 5.0), ev(n), alert_id=str(n))
    return now


@pytest.mark.parametrize("seed", range(30))
def test_rollback_restores_the_pre_batch_state_exactly(seed: int) -> None:
    rng = random.Random(seed)
    g = Grouper(cooldown_ms=COOLDOWN, max_groups=rng.choice([3, 6, 100]))
    keys: list[GroupKey] = [(t, p, pid) for t in ("a", "b") for p in range(2) for pid in (P, Q)]
    now = 0
    for _ in range(20):
        now = _random_batch(g, rng, now, keys)
        changelog_view = g.snapshot()
        if rng.random() < 0.5:
            g.commit()
            continue
        g.commit()
        before = g.snapshot()
        _random_batch(g, rng, now, keys)
        # changes() is exactly the difference, applied to the committed view.
        for key, state in g.changes().items():
            if state is None:
                changelog_view.pop(key, None)
            else:
                changelog_view[key] = state
        assert changelog_view == g.snapshot()
        g.rollback()
        assert g.snapshot() == before and g.changes() == {}


# --------------------------------------------------------------------- partitions


def test_restore_and_drop_partition() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    restored = GroupState(100, 900, 500, "id-x", 3, 4.5, {"offset": 9})
    g.restore(K, restored)
    g.restore(("events", 1, P), GroupState(0, 0))
    g.restore(("events", 1, Q), GroupState(0, 0))
    g.restore(("events", 1, Q), None)  # a later tombstone wins
    assert len(g) == 2 and g.changes() == {}, "restoring is not a change"
    assert not decide(g, K, 1_000, 5.0, 10).publish, "the restored window goes on"
    [summary] = g.due(10_500)
    assert (summary.suppressed, summary.max_score, summary.top_event) == (4, 5.0, ev(10))
    assert (summary.first_seen_ms, summary.window_alert_id, summary.window_start_ms) == (100, "id-x", 500)
    g.commit()
    assert g.drop_partition("events", 1) == 1 and g.get(("events", 1, P)) is None
    assert g.changes() == {}, "a revoked partition is forgotten without tombstones"
    assert g.get(K) is not None


def test_restore_and_drop_partition_refuse_uncommitted_changes() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    decide(g, K, 0, 2.0, 1)
    with pytest.raises(RuntimeError, match="uncommitted"):
        g.restore(K, None)
    with pytest.raises(RuntimeError, match="uncommitted"):
        g.drop_partition("events", 0)
    g.rollback()
    g.drop_partition("events", 0)


def test_a_restored_window_that_ended_while_down_is_summarised_by_the_next_due() -> None:
    g = Grouper(cooldown_ms=COOLDOWN)
    g.restore(K, GroupState(0, 10, 0, "id-x", 2, 3.0, {"offset": 2}))
    [summary] = g.due(1_000_000)
    assert summary.window_end_ms == COOLDOWN and summary.suppressed == 2


# --------------------------------------------------------------------- the bound


def test_lru_bound_evicts_the_least_recently_used_with_a_tombstone() -> None:
    g = Grouper(cooldown_ms=COOLDOWN, max_groups=2)
    a, b, c = ("t", 0, "a" * 32), ("t", 0, "b" * 32), ("t", 0, "c" * 32)
    decide(g, a, 0, 2.0, 1)
    decide(g, b, 1, 2.0, 2)
    g.due(COOLDOWN + 5)  # both windows closed, nothing suppressed
    decide(g, a, COOLDOWN + 10, 2.0, 3)  # a is used again: b is the LRU
    g.commit()
    d = decide(g, c, COOLDOWN + 20, 2.0, 4)
    assert d.publish and d.summaries == ()
    assert g.get(b) is None and g.get(a) is not None and len(g) == 2
    assert g.changes()[b] is None, "an eviction is a tombstone in the changelog"


def test_an_evicted_window_with_suppressed_events_is_summarised_in_the_evicting_decision() -> None:
    g = Grouper(cooldown_ms=COOLDOWN, max_groups=1)
    a, b = ("t", 0, "a" * 32), ("t", 0, "b" * 32)
    decide(g, a, 0, 2.0, 1)
    decide(g, a, 100, 4.0, 2)
    d = decide(g, b, 200, 2.0, 3)
    assert d.publish
    assert d.summaries == (
        Summary(a, 0, 200, 1, 4.0, ev(2), first_seen_ms=0, window_alert_id="id-t-0-1", evicted=True),
    )
    assert g.due(10**9) == [], "nothing left to summarise for the victim"
    assert decide(g, a, 300, 2.0, 4).publish, "an evicted window is gone: the pattern alerts again"


def test_the_bound_never_evicts_the_group_just_decided() -> None:
    g = Grouper(cooldown_ms=COOLDOWN, max_groups=1)
    decide(g, ("t", 0, "b" * 32), 0, 2.0, 1)
    # Same time, smaller key: (0, key) sorts first in the LRU order, yet it must stay.
    d = decide(g, ("t", 0, "a" * 32), 0, 2.0, 2)
    assert d.publish and len(g) == 1 and g.get(("t", 0, "a" * 32)) is not None


def test_restoring_beyond_the_bound_is_evicted_down_by_the_next_decide_without_losing_counts() -> None:
    g = Grouper(cooldown_ms=COOLDOWN, max_groups=2)
    for i in range(5):
        g.restore(("t", i, P), GroupState(0, i, 0, f"id-{i}", i, 2.0 + i, {"offset": i}))
    assert len(g) == 5
    d = decide(g, ("t", 9, P), 100, 2.0, 9)
    assert len(g) == 2
    # Evicted: the LRU ones (last_seen 0..3); those that had suppressed events are summarised.
    assert [(s.key[1], s.suppressed, s.evicted) for s in d.summaries] == [
        (1, 1, True),
        (2, 2, True),
        (3, 3, True),
    ]


# --------------------------------------------------------------------- changelog codec


@pytest.mark.parametrize(
    "state",
    [
        GroupState(0, 0),
        GroupState(1, 2, 3, "11034d17-ab8f-5ea5-97e4-3bf4d8334efb"),
        GroupState(1, 2, 3, "id", 7, 1.8412, {"text": "é ☃ \ud800", "fields": {"n": [1, 2.5, None, True]}}),
        GroupState(1, 2, 3, "id", 1, math.inf, {}),
        GroupState(-5, 2**62, 2**62, "id", 2**40, 1e308, {"deep": [[[{}]]]}),
    ],
)
def test_state_codec_round_trips_exactly(state: GroupState) -> None:
    data = encode_state(state)
    assert data.startswith(b'{"v":1,') and b", " not in data and b": " not in data
    assert decode_state(data) == state


@pytest.mark.parametrize(
    "key", [("events", 0, P), ("shop.events-v2_x", 2**31 - 1, Q), ("a", 1, ""), ("t", 0, 'q"\\\n')]
)
def test_key_codec_round_trips_and_is_canonical(key: GroupKey) -> None:
    data = encode_key(key)
    assert decode_key(data) == key and encode_key(decode_key(data)) == data


def test_keys_of_different_topics_with_the_same_partition_differ() -> None:
    assert encode_key(("a", 0, P)) != encode_key(("b", 0, P))
    assert encode_key(("events", 0, P)) == b'["events",0,"' + P.encode() + b'"]'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply|not JSON"),
        (b"[]", "JSON object"),
        (b'{"v":2,"first_seen_ms":0}', "unsupported version 2"),
        (b'{"first_seen_ms":0}', "unsupported version None"),
        (b'{"v":1,"first_seen_ms":"0","last_seen_ms":0,"suppressed":0}', "first_seen_ms must be an integer"),
        (b'{"v":1,"first_seen_ms":true,"last_seen_ms":0,"suppressed":0}', "first_seen_ms must be an integer"),
        (b'{"v":1,"first_seen_ms":0,"last_seen_ms":0}', "suppressed must be an integer"),
        (b'{"v":1,"first_seen_ms":0,"last_seen_ms":0,"suppressed":-1}', "suppressed must be >= 0"),
        (b'{"v":1,"first_seen_ms":0,"last_seen_ms":0,"suppressed":1}', "no window open"),
        (b'{"v":1,"first_seen_ms":0,"last_seen_ms":0,"suppressed":0,"window_start_ms":1}', "window_alert_id"),
        (
            b'{"v":1,"first_seen_ms":0,"last_seen_ms":0,"suppressed":1,"window_start_ms":1,"window_alert_id":"x"}',
            "exactly when suppressed > 0",
        ),
        (
            b'{"v":1,"first_seen_ms":0,"last_seen_ms":0,"suppressed":1,"window_start_ms":1,'
            b'"window_alert_id":"x","max_score":"high","top_event":{}}',
            "max_score must be a number",
        ),
        (
            b'{"v":1,"first_seen_ms":0,"last_seen_ms":0,"suppressed":1,"window_start_ms":1,'
            b'"window_alert_id":"x","max_score":2,"top_event":[]}',
            "top_event must be an object",
        ),
        (b'{"v":1,"first_seen_ms":' + b"9" * 5000 + b"}", "not JSON"),
    ],
)
def test_state_codec_rejects_garbage_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_state(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"{}", b'["t",0]', b'["t","0","p"]', b'["t",-1,"p"]', b'["t",true,"p"]', b'[1,0,"p"]'],
)
def test_key_codec_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError, match="group changelog key"):
        decode_key(data)


def test_encode_refuses_what_it_could_not_decode() -> None:
    with pytest.raises(ValueError):
        encode_key(("t", -1, P))
    with pytest.raises(ValueError):
        encode_key(("t", True, P))
    with pytest.raises(ValueError, match="JSON"):
        encode_state(GroupState(0, 0, 0, "x", 1, 2.0, {"x": math.nan}))


# --------------------------------------------------------------------- exactness across crashes


@dataclass
class _Event:
    key: GroupKey
    score: float
    n: int


@dataclass
class _Batch:
    now: int
    events: list[_Event]


@dataclass
class _Agent:
    """A stand-in for the pipeline: one grouper, the changelog topic, and what was published."""

    max_groups: int
    grouper: Grouper = field(init=False)
    changelog: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)  # (partition, k, v)
    published: list[tuple[Any, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.grouper = Grouper(cooldown_ms=COOLDOWN, max_groups=self.max_groups)

    def process(self, batch: _Batch) -> list[tuple[Any, ...]]:
        """Build one batch's outputs, as the pipeline does: due summaries, then each event."""
        g = self.grouper
        out: list[tuple[Any, ...]] = [("summary", s) for s in g.due(batch.now)]
        for e in batch.events:
            d = g.decide(e.key, batch.now, e.score, ev(e.n), alert_id=f"id-{e.n}")
            out += [("summary", s) for s in d.summaries]
            if d.publish:
                out.append(("alert", f"id-{e.n}"))
        return out

    def commit(self, out: list[tuple[Any, ...]]) -> None:
        """The transaction: outputs and the changelog records together, then commit()."""
        for key, state in self.grouper.changes().items():
            value = encode_state(state) if state is not None else None
            self.changelog.append((key[1], encode_key(key), value))
        self.published += out
        self.grouper.commit()

    def restart(self, rng: random.Random) -> None:
        """kill -9 and start again: a fresh grouper restored from the committed changelog, the
        changelog partitions replayed in a random interleaving (each in offset order)."""
        self.grouper = Grouper(cooldown_ms=COOLDOWN, max_groups=self.max_groups)
        partitions = sorted({p for p, _, _ in self.changelog})
        rng.shuffle(partitions)
        for p in partitions:
            for part, k, v in self.changelog:
                if part == p:
                    self.grouper.restore(decode_key(k), decode_state(v) if v is not None else None)

    def rebalance(self, topic: str, partition: int) -> None:
        """The partition is revoked, then assigned back: dropped, restored from its changelog."""
        self.grouper.drop_partition(topic, partition)
        for part, k, v in self.changelog:
            key = decode_key(k)
            if part == partition and key[0] == topic:
                self.grouper.restore(key, decode_state(v) if v is not None else None)


def _storm(rng: random.Random, batches: int) -> list[_Batch]:
    keys: list[GroupKey] = [(t, p, pid) for t in ("a", "b") for p in range(2) for pid in (P, Q)]
    hot = rng.sample(keys, 3)
    out, now, n = [], 0, 0
    for _ in range(batches):
        now += rng.choice([0, 1, 100, 1_000, 3_000, COOLDOWN // 2, COOLDOWN, 3 * COOLDOWN])
        events = []
        for _ in range(rng.randrange(0, 12)):
            n += 1
            key = rng.choice(hot) if rng.random() < 0.7 else rng.choice(keys)
            events.append(_Event(key, round(rng.uniform(1.0, 6.0), 2), n))
        out.append(_Batch(now, events))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_crashes_rollbacks_and_rebalances_publish_exactly_what_an_uninterrupted_run_does(seed: int) -> None:
    rng = random.Random(seed)
    max_groups = rng.choice([2, 5, 1000])
    batches = _storm(rng, 60)

    clean = _Agent(max_groups)
    for batch in batches:
        clean.commit(clean.process(batch))

    crashy = _Agent(max_groups)
    crashes = 0
    for batch in batches:
        while True:
            fate = rng.random()
            if fate < 0.25:  # killed mid-batch: the transaction never commits
                crashy.process(batch)
                crashy.restart(rng)
                crashes += 1
            elif fate < 0.4:  # the transaction aborted: rollback, the batch is rewound
                crashy.process(batch)
                crashy.grouper.rollback()
            elif fate < 0.5:  # a rebalance between batches gives a partition back to us
                crashy.rebalance(rng.choice("ab"), rng.randrange(2))
            else:
                break
        crashy.commit(crashy.process(batch))
        if rng.random() < 0.1:  # killed right after a commit
            crashy.restart(rng)

    assert crashes > 0
    assert crashy.published == clean.published
    assert crashy.grouper.snapshot() == clean.grouper.snapshot()
    alerts = [o for o in clean.published if o[0] == "alert"]
    suppressed = sum(o[1].suppressed for o in clean.published if o[0] == "summary")
    assert suppressed > 0 and alerts
    # Nothing is lost, evictions included: every event was alerted, summarised or is still counted.
    pending = sum(state.suppressed for state in clean.grouper.snapshot().values())
    assert len(alerts) + suppressed + pending == sum(len(b.events) for b in batches)


def test_a_kill_mid_storm_keeps_the_window_and_the_count() -> None:
    """The issue's scenario, spelled out: 1 alert + 5 suppressed, a crash after 3 of them."""
    agent = _Agent(max_groups=100)
    agent.commit(agent.process(_Batch(0, [_Event(K, 2.0, 1), _Event(K, 3.0, 2)])))
    agent.commit(agent.process(_Batch(1_000, [_Event(K, 2.0, 3), _Event(K, 2.0, 4)])))
    agent.process(_Batch(2_000, [_Event(K, 9.0, 5), _Event(K, 2.0, 6)]))  # killed before commit
    agent.restart(random.Random(0))
    agent.commit(agent.process(_Batch(2_500, [_Event(K, 9.0, 5), _Event(K, 2.0, 6)])))  # redelivered
    agent.commit(agent.process(_Batch(COOLDOWN, [])))
    assert [o[0] for o in agent.published] == ["alert", "summary"], "no second 'first' alert"
    summary = agent.published[1][1]
    assert (summary.suppressed, summary.max_score, summary.top_event) == (5, 9.0, ev(5))
