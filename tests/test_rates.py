"""Pattern rates (agent/alerts/rates.py) without Kafka: the rule on synthetic counts, warm-up and
seeding, the bound, the codec, and the same decisions whatever the batch boundaries, aborts,
restarts (restored from the changelog of committed batches) and rebalances."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from scipy import stats

from agent.alerts import grouping
from agent.alerts.rates import (
    Baseline,
    RateDecision,
    RateKey,
    RateState,
    RateTracker,
    _tail_limit,
    decode_key,
    decode_state,
    encode_key,
    encode_state,
)

P = "0123456789abcdef0123456789abcdef"
Q = "fedcba9876543210fedcba9876543210"
R = "5" * 32
K: RateKey = ("events", 0, P, ())
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

Event = tuple[int, RateKey]  # (timestamp ms, key)


def poisson_events(key: RateKey, rate: Callable[[int], float], minutes: range, seed: int) -> list[Event]:
    """``key``'s events with Poisson counts per minute (``rate(minute)``), spread in each minute."""
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    for minute in minutes:
        for offset in sorted(rng.integers(0, MINUTE, rng.poisson(rate(minute)))):
            out.append((minute * MINUTE + int(offset), key))
    return out


def drive(tracker: RateTracker, events: Iterable[Event]) -> list[RateDecision]:
    """Replay ``events`` (merged in time order) at the running maximum of their timestamps."""
    out: list[RateDecision] = []
    now = -1
    for n, (ts, key) in enumerate(sorted(events, key=lambda e: e[0])):
        now = max(now, ts)
        out += tracker.observe(key, now)
        if n % 1000 == 999:
            tracker.commit()
    tracker.commit()
    return out


def heartbeat(minutes: range, seed: int = 99) -> list[Event]:
    """Another pattern at 30/min on the same partition: it moves the event time along."""
    return poisson_events(("events", 0, Q, ()), lambda _: 30.0, minutes, seed)


def steady(rate: float, days: int = 3, seed: int = 1, key: RateKey = K) -> list[Event]:
    return poisson_events(key, lambda _: rate, range(days * 24 * 60), seed)


# --------------------------------------------------------------------- the rule on synthetic counts


@pytest.mark.parametrize("rate", [0.5, 5.0, 50.0])
def test_a_steady_pattern_raises_nothing(rate: float) -> None:
    assert drive(RateTracker(), steady(rate) + heartbeat(range(3 * 24 * 60))) == []


def test_a_bursty_overdispersed_pattern_raises_nothing() -> None:
    """Negative binomial counts (mean 10, variance 110) and, every ~3 h, a burst of ~15× its mean
    (a batch job): the records learn the bursts during the warm-up."""
    rng = np.random.default_rng(7)
    counts = rng.negative_binomial(1.0, 1 / 11, 4 * 24 * 60)
    counts[rng.random(counts.size) < 1 / 180] += 150
    events = [
        (m * MINUTE + int(o), K) for m, c in enumerate(counts) for o in sorted(rng.integers(0, MINUTE, c))
    ]
    assert drive(RateTracker(), events + heartbeat(range(4 * 24 * 60))) == []


def test_a_daily_cycle_raises_nothing() -> None:
    """From 1/min at night to 40/min at noon and back, every day, and a pattern that only logs by
    day (quiet 8 h a night): neither is a spike or a silence once a day has been seen."""
    cycle = poisson_events(K, lambda m: 20.5 - 19.5 * math.cos(2 * math.pi * m / 1440), range(4 * 1440), 3)
    daytime = ("events", 0, R, ())
    office = poisson_events(
        daytime, lambda m: 10.0 if 480 <= m % 1440 < 1440 - 480 else 0.0, range(4 * 1440), 4
    )
    assert drive(RateTracker(), cycle + office + heartbeat(range(4 * 1440))) == []


@pytest.mark.parametrize("factor", [10, 20, 50])
def test_a_surge_is_a_spike_in_its_first_bucket(factor: int) -> None:
    onset = 2 * 1440 + 600  # minutes: day 3, 10:00
    base = steady(20.0)
    surge = poisson_events(K, lambda _: (factor - 1) * 20.0, range(onset, onset + 5), 5)
    decisions = drive(RateTracker(), base + surge)
    assert decisions, "the surge was not found"
    first = decisions[0]
    assert (first.kind, first.key, first.bucket_start_ms) == ("spike", K, onset * MINUTE)
    assert first.at_ms < (onset + 1) * MINUTE  # decided at the crossing event, mid-bucket
    assert first.observed == first.threshold and first.buckets == 1 and first.bucket_seconds == 60.0
    assert first.score > 1.0 and 18.0 < first.expected < 22.0 and first.baseline_since_ms < DAY
    assert {d.kind for d in decisions} == {"spike"} and all(
        onset * MINUTE <= d.bucket_start_ms < (onset + 5) * MINUTE for d in decisions
    )
    assert len({d.bucket_start_ms for d in decisions}) == len(decisions), "one spike per key and bucket"


def test_a_steady_pattern_going_quiet_is_one_silence_per_episode() -> None:
    minutes = range(3 * 1440)
    stops = [(2 * 1440 + 100, 15), (2 * 1440 + 400, 30)]  # (start, minutes): two outages
    events = [
        e for e in steady(20.0) if not any(s * MINUTE <= e[0] < (s + d) * MINUTE for s, d in stops)
    ] + heartbeat(minutes)
    decisions = drive(RateTracker(), events)
    assert [d.kind for d in decisions] == ["silence", "silence"]
    for decision, (start, _) in zip(decisions, stops, strict=True):
        # Silent from the first empty bucket; decided once P(no event) < 1e-6 (2 buckets at 20/min).
        assert decision.bucket_start_ms == start * MINUTE and decision.observed == 0
        assert decision.at_ms <= (start + decision.threshold + 1) * MINUTE and decision.threshold <= 3
        assert decision.expected == pytest.approx(20.0 * decision.buckets, rel=0.2) and decision.score > 1.0


def test_a_quiet_partition_reports_a_silence_on_the_wall_clock() -> None:
    tracker = RateTracker()
    drive(tracker, steady(20.0, days=2))
    last = max(ts for ts, _ in steady(20.0, days=2))
    assert tracker.advance(last) == ()
    wall = tracker.advance(last + 10 * MINUTE)  # no record moves the event time: the wall clock
    assert [d.kind for d in wall] == ["silence"] and wall[0].at_ms == last + 10 * MINUTE
    assert tracker.advance(last + 60 * MINUTE) == (), "one silence per episode"
    # The same silence by event time (another key's record) has the same id basis.
    replay = RateTracker()
    drive(replay, steady(20.0, days=2))
    by_event_time = replay.observe(("events", 0, Q, ()), last + 10 * MINUTE)
    assert [d.basis() for d in by_event_time] == [wall[0].basis()]


def test_a_sparse_pattern_needs_a_long_silence_and_an_on_off_one_is_not_steady() -> None:
    """0.3 events a minute: steady, but only ~46 empty minutes are improbable; 20/min for 2 h then
    4 h off (a batch job): its own 4-hour gaps make it no heartbeat, and no spike when it restarts."""
    on_off: RateKey = ("events", 0, R, ())
    bursts = poisson_events(on_off, lambda m: 20.0 if (m // 120) % 3 == 0 else 0.0, range(3 * 1440), 2)
    tracker = RateTracker()
    assert drive(tracker, steady(0.3) + bursts + heartbeat(range(3 * 1440))) == []
    sparse, job = tracker.get(K), tracker.get(on_off)
    assert sparse is not None and job is not None
    assert 30 < sparse.after <= 60 and job.after == -1


def test_nothing_is_decided_during_the_warm_up() -> None:
    surge = poisson_events(K, lambda _: 400.0, range(300, 305), 5)  # 5 h in: a 20× surge
    quiet = [e for e in steady(20.0, days=1) if not 600 * MINUTE <= e[0] < 700 * MINUTE]
    assert drive(RateTracker(), quiet + surge + heartbeat(range(1440))) == []
    # The same tracker with a 1 h warm-up finds both.
    found = drive(RateTracker(warmup_ms=HOUR), quiet + surge + heartbeat(range(1440)))
    assert [d.kind for d in found][:1] == ["spike"] and "silence" in {d.kind for d in found}


def test_a_seeded_key_alerts_without_warm_up() -> None:
    tracker = RateTracker()
    training = [ts for ts, _ in steady(20.0, days=1)]
    baseline = tracker.learn(training, until_ms=DAY)
    assert baseline is not None and baseline.since_ms == training[0] and baseline.buckets == 1441
    assert tracker.learn([]) is None
    start = 10 * 1440  # ten days later: a fresh deployment
    live = poisson_events(K, lambda _: 20.0, range(start, start + 60), 8)
    surge = poisson_events(K, lambda _: 380.0, range(start + 30, start + 32), 9)
    found = [d for e in sorted(live + surge) for d in tracker.observe(e[1], e[0], seed=baseline)]
    assert [d.kind for d in found][:1] == ["spike"] and found[0].bucket_start_ms == (start + 30) * MINUTE
    assert found[0].baseline_since_ms == training[0]
    # Unseeded, the same traffic is a new key: warming up, nothing.
    fresh = RateTracker()
    assert [d for e in sorted(live + surge) for d in fresh.observe(e[1], e[0])] == []
    # A seed only starts a key that has no state.
    other = Baseline(
        since_ms=-1, buckets=5, fast_sum=0.0, fast_squares=0.0, slow_sum=0.0, busiest=0.0, worst_gap=0.0
    )
    tracker.observe(K, (start + 61) * MINUTE, seed=other)
    state = tracker.get(K)
    assert state is not None and state.since_ms == training[0]


def test_learning_is_the_online_rule() -> None:
    """A key seeded with what ``learn`` made of some events, and a key that saw those events
    online, are in the same state after their next event."""
    events = steady(5.0, days=1)
    online = RateTracker()
    drive(online, events)
    baseline = online.learn([ts for ts, _ in events])
    assert baseline is not None
    after = (events[-1][0] // MINUTE + 1) * MINUTE  # the next bucket
    online.observe(K, after)
    seeded = RateTracker()
    seeded.observe(K, after, seed=baseline)
    assert seeded.get(K) == online.get(K)


def test_a_spike_does_not_teach_the_key_that_spikes_are_normal() -> None:
    """Winsorized: the bucket that decided a spike enters the baseline as its threshold; a second
    surge the next hour is still a spike."""
    base = steady(20.0)
    onsets = [2 * 1440 + 600, 2 * 1440 + 660]
    surges = [
        e for i, s in enumerate(onsets) for e in poisson_events(K, lambda _: 980.0, range(s, s + 3), 20 + i)
    ]
    decisions = drive(RateTracker(), base + surges)
    starts = {d.bucket_start_ms // MINUTE for d in decisions if d.kind == "spike"}
    assert all(any(s <= b < s + 3 for b in starts) for s in onsets)


def test_only_a_key_that_may_go_silent_builds_and_keeps_an_example() -> None:
    """The example (what a silence alert shows) is built for a bucket only when a silence may be
    decided after it — a steady key, warm by its deadline — and dropped when the key cannot go
    silent: sparse keys neither build examples nor carry them into the changelog."""
    tracker = RateTracker(warmup_ms=HOUR)
    made: list[tuple[RateKey, int]] = []
    sparse: RateKey = ("events", 0, Q, ())

    def example(key: RateKey, ts: int) -> Callable[[], dict[str, int]]:
        def make() -> dict[str, int]:
            made.append((key, ts))
            return {"at": ts}

        return make

    events = [(m * MINUTE + 5_000, K) for m in range(3 * 60)]  # a heartbeat: steady, 14 buckets
    events += [(m * MINUTE + 9_000, sparse) for m in range(0, 3 * 60, 47)]  # never steady
    for ts, key in sorted(events):
        tracker.observe(key, ts, example=example(key, ts))
    heartbeat = [ts for key, ts in made if key == K]
    # Bucket b's silence deadline is (b + 1 + 14) minutes: warm (an hour after the first event,
    # 5 s into minute 0) from bucket 46 on.
    assert heartbeat == [m * MINUTE + 5_000 for m in range(46, 3 * 60)]
    assert not [ts for key, ts in made if key == sparse]
    state, quiet = tracker.get(K), tracker.get(sparse)
    assert state is not None and state.example == {"at": (3 * 60 - 1) * MINUTE + 5_000}
    assert quiet is not None and quiet.example is None


def test_tail_limit_is_the_exact_poisson_quantile() -> None:
    for mean in [1e-4, 0.05, 0.7, 3.0, 20.0, 700.0, 1e5]:
        for alpha in [1e-2, 1e-6, 1e-10]:
            c = _tail_limit(mean, alpha)
            assert stats.poisson.sf(c - 1, mean) < alpha * (1 + 1e-9)
            assert c == 1 or stats.poisson.sf(c - 2, mean) >= alpha * (1 - 1e-9)
    assert _tail_limit(0.0, 1e-6) == 1


def test_invalid_knobs_are_refused() -> None:
    for bad in (
        {"bucket_ms": 0},
        {"max_keys": 0},
        {"fast_half_life_ms": 10, "bucket_ms": 60_000},
        {"warmup_ms": -1},
        {"spike_alpha": 0.0},
        {"silence_alpha": 1.0},
        {"min_count": 0},
        {"min_ratio": 0.5},
        {"spike_margin": math.nan},
        {"gap_margin": 0.9},
    ):
        with pytest.raises(ValueError):
            RateTracker(**bad)


# --------------------------------------------------------------------- undo, partitions, the bound


def test_changes_commit_and_rollback() -> None:
    tracker = RateTracker()
    assert tracker.observe(K, 1_000) == ()
    assert tracker.changes() == {K: tracker.get(K)}
    tracker.commit()
    assert tracker.changes() == {}
    before = tracker.snapshot()
    tracker.observe(K, 2_000)
    tracker.observe(K, 70_000)
    tracker.observe(("events", 1, P, ()), 70_000)
    assert set(tracker.changes()) == {K, ("events", 1, P, ())}
    tracker.rollback()
    assert tracker.snapshot() == before and tracker.changes() == {}


def test_restore_and_drop_partition_refuse_uncommitted_changes() -> None:
    tracker = RateTracker()
    tracker.observe(K, 0)
    with pytest.raises(RuntimeError, match="uncommitted"):
        tracker.restore(K, None)
    with pytest.raises(RuntimeError, match="uncommitted"):
        tracker.drop_partition("events", 0)
    tracker.commit()
    tracker.observe(("other", 0, P, ()), 0)
    tracker.observe(("events", 1, P, ()), 0)
    tracker.commit()
    assert tracker.drop_partition("events", 0) == 1 and len(tracker) == 2
    tracker.restore(K, RateState(since_ms=5, bucket=0, count=3))
    assert tracker.get(K) == RateState(since_ms=5, bucket=0, count=3)
    tracker.restore(K, None)
    assert K not in tracker


def test_the_bound_evicts_the_least_recently_seen_key_with_a_tombstone() -> None:
    tracker = RateTracker(max_keys=3)
    keys: list[RateKey] = [("events", 0, f"{i:032x}", ()) for i in range(5)]
    for minute, key in enumerate(keys[:3]):
        tracker.observe(key, minute * MINUTE)
    tracker.commit()
    tracker.observe(keys[0], 10 * MINUTE)  # keys[1] is now the least recently seen
    tracker.observe(keys[3], 11 * MINUTE)
    assert keys[1] not in tracker and len(tracker) == 3
    assert tracker.changes()[keys[1]] is None, "an evicted key leaves a tombstone"
    tracker.commit()
    # The key just observed is never the victim, even when it is the oldest of the batch.
    tracker.observe(keys[4], 0)
    assert keys[4] in tracker and len(tracker) == 3


def test_an_evicted_key_keeps_its_decided_alerts_and_loses_only_its_baseline() -> None:
    tracker = RateTracker(max_keys=2, warmup_ms=HOUR)
    events = steady(20.0, days=1)
    spikes = drive(tracker, events + poisson_events(K, lambda _: 900.0, range(700, 702), 3))
    assert spikes and spikes[0].kind == "spike"  # decided, returned: the caller's from here on
    for i in range(2):  # two new keys: K, the least recently seen, goes with its baseline
        tracker.observe(("events", 0, f"{i:032x}", ()), DAY + i)
    assert K not in tracker and tracker.changes()[K] is None
    tracker.commit()
    tracker.observe(K, DAY + 10)
    state = tracker.get(K)
    assert state is not None and state.since_ms == DAY + 10 and state.buckets == 0


def test_restoring_beyond_the_bound_is_evicted_down_by_the_next_new_key() -> None:
    tracker = RateTracker(max_keys=2)
    for i in range(4):
        tracker.restore(("events", 0, f"{i:032x}", ()), RateState(since_ms=0, bucket=i, count=1))
    assert len(tracker) == 4
    tracker.observe(("events", 0, "new", ()), 10 * MINUTE)
    assert len(tracker) == 2 and ("events", 0, f"{3:032x}", ()) in tracker


def test_memory_per_key_is_about_the_documented_800_bytes() -> None:
    """The state, its key (a 32-character pattern id and one field value, the topic shared), the
    dict entry and the heap entries of a key seen in two buckets (stale LRU entries included: the
    heaps are compacted only beyond twice the live keys)."""
    tracker = RateTracker()
    n = 20_000
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(n):
        key = ("events", 0, f"{i:032x}", (f"svc-{i % 7}",))
        tracker.observe(key, i)
        tracker.observe(key, i + MINUTE)
    tracker.commit()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_key = sum(s.size_diff for s in after.compare_to(before, "filename")) / n
    assert 500 < per_key < 1000, per_key


# --------------------------------------------------------------------- changelog codec


@pytest.mark.parametrize(
    "state",
    [
        RateState(since_ms=0, bucket=0, count=1),
        RateState(1, 2, 3, 4, 0.1, 0.2, 0.30000000000000004, 5.5, 6.25, True, False),
        RateState(-5, 2**40, 2**31, 2**33, 1e308, 5e-324, 123.456, 1e6, 3.0, False, True),
    ],
)
def test_state_codec_round_trips_exactly(state: RateState) -> None:
    data = encode_state(state)
    assert data.startswith(b'{"v":1,') and b", " not in data and b": " not in data
    assert decode_state(data) == state
    assert encode_state(decode_state(data)) == data


@pytest.mark.parametrize(
    "key",
    [
        ("events", 0, P, ()),
        ("shop.events-v2_x", 2**31 - 1, Q, ("checkout", "eu-1")),
        ("t", 0, "", ("é ☃", 'q"\\\n')),
    ],
)
def test_key_codec_round_trips_and_is_canonical(key: RateKey) -> None:
    data = encode_key(key)
    assert decode_key(data) == key and encode_key(decode_key(data)) == data
    assert json.loads(data) == {
        "key": [key[2], *key[3]],
        "kind": "rate",
        "partition": key[1],
        "topic": key[0],
    }


def test_rate_keys_and_grouping_keys_cannot_be_confused() -> None:
    assert (
        encode_key(("events", 0, P, ()))
        == b'{"key":["' + P.encode() + b'"],"kind":"rate","partition":0,"topic":"events"}'
    )
    with pytest.raises(ValueError, match="group changelog key"):
        grouping.decode_key(encode_key(("events", 0, P, ())))
    with pytest.raises(ValueError, match="rate changelog key"):
        decode_key(grouping.encode_key(("events", 0, P)))
    assert encode_key(("a", 0, P, ())) != encode_key(("b", 0, P, ()))
    assert encode_key(("a", 0, P, ("x",))) != encode_key(("a", 0, P, ())) != encode_key(("a", 1, P, ()))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply|not JSON"),
        (b"[]", "JSON object"),
        (b'{"v":2}', "unsupported version 2"),
        (b'{"v":true}', "unsupported version True"),
        (b'{"since_ms":0}', "unsupported version None"),
        (b'{"v":1,"since_ms":0}', "fields missing"),
        (encode_state(RateState(0, 0, 1))[:-1] + b',"extra":1}', "unknown"),
        (encode_state(RateState(0, 0, 1)).replace(b'"count":1', b'"count":0'), "count must be >= 1"),
        (encode_state(RateState(0, 0, 1)).replace(b'"count":1', b'"count":1.5'), "count must be an integer"),
        (encode_state(RateState(0, 0, 1)).replace(b'"count":1', b'"count":true'), "count must be an integer"),
        (encode_state(RateState(0, 0, 1)).replace(b'"busiest":0.0', b'"busiest":NaN'), "finite number"),
        (encode_state(RateState(0, 0, 1)).replace(b'"busiest":0.0', b'"busiest":1e999'), "finite number"),
        (encode_state(RateState(0, 0, 1)).replace(b'"busiest":0.0', b'"busiest":-1.0'), "finite number >= 0"),
        (encode_state(RateState(0, 0, 1)).replace(b'"busiest":0.0', b'"busiest":"0"'), "finite number"),
        (encode_state(RateState(0, 0, 1)).replace(b'"spiked":false', b'"spiked":0'), "true or false"),
        (encode_state(RateState(0, 0, 1)).replace(b'"buckets":0', b'"buckets":-1'), "buckets >= 0"),
    ],
)
def test_state_codec_rejects_garbage_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_state(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"[]",
        b'["events",0,"p"]',
        b'{"key":["p"],"kind":"rate","partition":0}',
        b'{"key":["p"],"kind":"group","partition":0,"topic":"t"}',
        b'{"key":[],"kind":"rate","partition":0,"topic":"t"}',
        b'{"key":["p",1],"kind":"rate","partition":0,"topic":"t"}',
        b'{"key":["p"],"kind":"rate","partition":-1,"topic":"t"}',
        b'{"key":["p"],"kind":"rate","partition":true,"topic":"t"}',
        b'{"key":["p"],"kind":"rate","partition":0,"topic":7}',
        b'{"kind":"rate","key":["p"],"partition":0,"topic":"t"}',  # not canonical: keys unsorted
        b'{"key": ["p"],"kind":"rate","partition":0,"topic":"t"}',  # not canonical: a space
    ],
)
def test_key_codec_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError, match="rate changelog key"):
        decode_key(data)


def test_encode_refuses_what_it_could_not_decode() -> None:
    for key in [
        ("t", -1, P, ()),
        ("t", True, P, ()),
        ("t", 0, P, ("x", 1)),
        ("t", 0, P, ["x"]),
        (1, 0, P, ()),
    ]:
        with pytest.raises(ValueError, match="rate key"):
            encode_key(key)  # type: ignore[arg-type]
    for bad in (replace(RateState(0, 0, 1), fast_sum=math.nan), replace(RateState(0, 0, 1), count=0)):
        with pytest.raises(ValueError):
            encode_state(bad)


def test_the_state_codec_writes_exactly_what_json_dumps_writes() -> None:
    """encode_state formats states of exact types directly (the hot path: a record per changed key
    per batch): byte for byte the compact json.dumps of the document, examples with non-ASCII
    text, nested fields, huge and subnormal numbers included; other types take the checked path."""
    rng = random.Random(5)

    def number() -> float:
        choices = [
            0.0,
            -0.0,
            5e-324,
            1e308,
            float(rng.randrange(100)),
            rng.random() * 10.0 ** rng.randrange(-5, 30),
        ]
        return choices[rng.randrange(len(choices))]

    for _ in range(2_000):
        example = rng.choice(
            [
                None,
                {"offset": rng.randrange(10**9), "key": None, "text": 'é ☃ "q"\n\\' * rng.randrange(3)},
                {"fields": {"a": [1.5, -0.0, 2**70, True, None, {"b": "\u2028"}]}, "timestamp_ms": -1},
            ]
        )
        state = RateState(
            rng.randrange(-(10**13), 10**13), rng.randrange(2**40), rng.randrange(1, 2**33),
            rng.randrange(2**33), number(), number(), number(), number(), number(),
            rng.random() < 0.5, rng.random() < 0.5, example,
        )  # fmt: skip
        document = {"v": 1, **{name: getattr(state, name) for name in (
            "since_ms", "bucket", "count", "buckets", "fast_sum", "fast_squares", "slow_sum", "busiest",
            "worst_gap", "spiked", "silent", "example")}}  # fmt: skip
        data = encode_state(state)
        assert data == json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")
        assert decode_state(data) == state
    as_int = replace(RateState(0, 0, 1), busiest=3)  # an int where a float belongs: the checked path
    assert b'"busiest":3,' in encode_state(as_int) and decode_state(encode_state(as_int)) == as_int
    for bad in (
        replace(RateState(0, 0, 1), count=True),
        replace(RateState(0, 0, 1), busiest=-1.0),
        replace(RateState(0, 0, 1), worst_gap=math.inf),
        replace(RateState(0, 0, 1), spiked=1),  # type: ignore[arg-type]
        replace(RateState(0, 0, 1), example=[1]),  # type: ignore[arg-type]
        replace(RateState(0, 0, 1), example={"x": math.nan}),
        replace(RateState(0, 0, 1), example={"x": object()}),
    ):
        with pytest.raises(ValueError):
            encode_state(bad)


def test_memoised_key_encodings_refuse_what_they_refused_before() -> None:
    """encode_key remembers encodings; a key equal to a remembered one but of another type
    (partition True or 1.0 for 1) is still refused, and a remembered key is the same bytes."""
    key = ("memo", 1, P, ("x",))
    assert encode_key(key) == encode_key(("memo", 1, P, ("x",))) == encode_key(decode_key(encode_key(key)))
    for lookalike in (("memo", True, P, ("x",)), ("memo", 1.0, P, ("x",))):
        with pytest.raises(ValueError, match="partition must be an int"):
            encode_key(lookalike)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key-field values"):
        encode_key(("memo", 1, P, ["x"]))  # type: ignore[arg-type]


def test_decision_basis_is_canonical_and_names_key_kind_and_bucket() -> None:
    decision = RateDecision("silence", ("t", 3, P, ("svc",)), 9, 120_000, 60_000, 2, 0, 40.0, 2, 1.5, 0)
    assert decision.basis() == (
        '{"bucket_start_ms":120000,"key":["' + P + '","svc"],"kind":"silence","partition":3,"topic":"t"}'
    )


# --------------------------------------------------------------------- exactness across crashes

SMALL = {  # the rule on a fast clock, so a short stream has warm-ups, spikes and silences
    "bucket_ms": 1_000,
    "fast_half_life_ms": 30_000,
    "slow_half_life_ms": 120_000,
    "warmup_ms": 60_000,
    "steady_within_ms": 20_000,
    "min_count": 5,
}
PARTITIONS = [("a", 0), ("a", 1), ("b", 0)]
PATTERNS = [P, Q, R]

Record = tuple[str, int, int, str]  # (topic, partition, timestamp ms, pattern)


def synthetic(rng: random.Random, seconds: int = 400) -> list[Record]:
    """Records of three partitions, timestamps rising (a partition's producer's clock), each
    pattern at its own rate with surges and outages."""
    out: list[Record] = []
    for topic, partition in PARTITIONS:
        for pattern in PATTERNS:
            rate = rng.choice([2.0, 6.0])
            surges = {rng.randrange(90, seconds) for _ in range(3)}
            outage = rng.randrange(90, seconds - 30)
            for second in range(seconds):
                if outage <= second < outage + 12:
                    continue
                n = np.random.default_rng(rng.randrange(2**32)).poisson(
                    rate * (15 if second in surges else 1)
                )
                out += [(topic, partition, second * 1000 + rng.randrange(1000), pattern) for _ in range(n)]
    out.sort(key=lambda r: r[2])
    return out


@dataclass
class _Agent:
    """A stand-in for the pipeline: a tracker and an event time per input partition, the
    changelog (one partition per input partition number), what was published."""

    trackers: dict[tuple[str, int], RateTracker] = field(default_factory=dict)
    event_time: dict[tuple[str, int], int] = field(default_factory=dict)
    changelog: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)
    published: list[RateDecision] = field(default_factory=list)

    def tracker(self, partition: tuple[str, int]) -> RateTracker:
        if partition not in self.trackers:
            self.trackers[partition] = RateTracker(**SMALL)
        return self.trackers[partition]

    def process(self, batch: Sequence[Record]) -> tuple[list[RateDecision], dict[tuple[str, int], int]]:
        """One batch: the decisions, and the event times as they were before it (for an abort)."""
        undo = dict(self.event_time)
        out: list[RateDecision] = []
        for topic, partition, ts, pattern in batch:
            where = (topic, partition)
            now = self.event_time[where] = max(self.event_time.get(where, -1), ts)
            out += self.tracker(where).observe((topic, partition, pattern, ()), now)
        return out, undo

    def commit(self, out: list[RateDecision]) -> None:
        for tracker in self.trackers.values():
            for key, state in tracker.changes().items():
                self.changelog.append(
                    (key[1], encode_key(key), None if state is None else encode_state(state))
                )
            tracker.commit()
        self.published += out

    def abort(self, undo: dict[tuple[str, int], int]) -> None:
        for tracker in self.trackers.values():
            tracker.rollback()
        self.event_time = undo

    def assign(self, where: tuple[str, int]) -> None:
        """(Re)assigned: a fresh tracker restored from the partition's changelog records."""
        self.trackers[where] = tracker = RateTracker(**SMALL)
        for part, raw_key, value in self.changelog:
            key = decode_key(raw_key)
            if part == where[1] and key[0] == where[0]:
                tracker.restore(key, None if value is None else decode_state(value))

    def restart(self, rng: random.Random) -> None:
        """kill -9: every tracker restored from the committed changelog (partitions in a random
        order); the event times start again from the redelivered records."""
        self.trackers, self.event_time = {}, {}
        for where in rng.sample(PARTITIONS, len(PARTITIONS)):
            self.assign(where)

    def rebalance(self, where: tuple[str, int]) -> None:
        """The partition is revoked, then assigned back: dropped, restored from its changelog."""
        if where in self.trackers:
            self.trackers[where].drop_partition(*where)
        self.assign(where)


def batches(records: Sequence[Record], rng: random.Random) -> list[list[Record]]:
    out, i = [], 0
    while i < len(records):
        size = rng.choice([0, 1, 7, 50, 300, 1500])
        out.append(list(records[i : i + size]))
        i += size
    return out


@pytest.mark.parametrize("seed", range(12))
def test_crashes_rollbacks_rebalances_and_batch_splits_decide_exactly_as_one_uninterrupted_run(
    seed: int,
) -> None:
    rng = random.Random(seed)
    records = synthetic(rng)
    clean = _Agent()
    for batch in batches(records, random.Random(f"clean-{seed}")):
        out, _ = clean.process(batch)
        clean.commit(out)
    kinds = {d.kind for d in clean.published}
    assert kinds == {"spike", "silence"}, "the stream must exercise both decisions"

    crashy, crashes = _Agent(), 0
    for batch in batches(records, rng):
        while True:
            fate = rng.random()
            if fate < 0.15:  # killed mid-batch: the transaction never commits
                crashy.process(batch)
                crashy.restart(rng)
                crashes += 1
            elif fate < 0.35:  # the transaction aborted: rollback, the batch is redelivered
                crashy.abort(crashy.process(batch)[1])
            elif fate < 0.45:  # a rebalance between batches gives a partition back
                crashy.rebalance(rng.choice(PARTITIONS))
            else:
                break
        crashy.commit(crashy.process(batch)[0])

    assert crashes > 0
    assert [(d.kind, d.key, d.bucket_start_ms, d.observed) for d in crashy.published] == [
        (d.kind, d.key, d.bucket_start_ms, d.observed) for d in clean.published
    ]
    assert [d.basis() for d in crashy.published] == [d.basis() for d in clean.published]
    for where in PARTITIONS:
        assert crashy.tracker(where).snapshot() == clean.tracker(where).snapshot()


def test_the_same_records_in_any_batches_with_aborts_give_identical_decisions() -> None:
    """Without restarts the decisions are identical field for field (their times too), also with
    timestamps that go back within a partition (the event time is the running maximum)."""
    rng = random.Random(5)
    records = synthetic(rng)
    shuffled = [
        (t, p, ts - (rng.randrange(3000) if rng.random() < 0.1 else 0), pat) for t, p, ts, pat in records
    ]
    runs = []
    for split_seed in range(3):
        agent, split = _Agent(), random.Random(split_seed)
        for batch in batches(shuffled, split):
            if split.random() < 0.3:
                agent.abort(agent.process(batch)[1])
            agent.commit(agent.process(batch)[0])
        runs.append(agent.published)
    assert runs[0] and runs[0] == runs[1] == runs[2]


def test_a_rolled_back_batch_is_decided_again_identically() -> None:
    tracker = RateTracker(**SMALL)
    records = [r for r in synthetic(random.Random(2)) if (r[0], r[1]) == ("a", 0)]
    half = len(records) // 2
    for topic, partition, ts, pattern in records[:half]:
        tracker.observe((topic, partition, pattern, ()), ts)
    tracker.commit()

    def rest() -> list[RateDecision]:
        return [d for t, p, ts, pat in records[half:] for d in tracker.observe((t, p, pat, ()), ts)]

    first = rest()
    changed = tracker.changes()
    tracker.rollback()
    assert rest() == first and first and tracker.changes() == changed


def test_seed_baselines_are_frozen_values() -> None:
    baseline = Baseline(0, 1, 1.0, 1.0, 1.0, 1.0, 0.0)
    with pytest.raises(AttributeError):
        baseline.buckets = 2  # type: ignore[misc]
