"""The session model (agent/model/sessions.py): step and close scores on hand-made request sessions,
calibration, decisive steps, bounds, persistence and the state codec."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from agent.model.detectors.calibration import tail_evidence
from agent.model.examples import pattern_hash
from agent.model.sessions import (
    END_CODE,
    START_CODE,
    SessionModel,
    SessionScore,
    SessionSequence,
    SessionWindows,
    _scaled,
    _Tail,
    state_from_dict,
    state_to_dict,
)

P = {
    name: pattern_hash(f"request {name} <NUM>")
    for name in ("start", "auth", "cache", "db", "retry", "done", "panic")
}
WINDOWS = SessionWindows(gap_seconds=30.0, max_seconds=600.0, max_events=50)
NORMAL = (
    ("start", "auth", "db", "done"),
    ("start", "auth", "cache", "db", "done"),
    ("start", "auth", "db", "retry", "db", "done"),
)


def requests(n: int, seed: int = 0) -> list[SessionSequence]:
    """``n`` normal request sessions: mostly the short path, some cached, a few retried."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        path = NORMAL[0] if rng.random() < 0.6 else NORMAL[1] if rng.random() < 0.8 else NORMAL[2]
        out.append(SessionSequence(tuple(P[s] for s in path)))
    return out


@pytest.fixture(scope="module")
def model() -> SessionModel:
    return SessionModel.fit(
        requests(600), windows=WINDOWS, templates={h: f"request {n} <NUM>" for n, h in P.items()}
    )


def run(model: SessionModel, names: tuple[str, ...], reason: str = "gap") -> tuple[list[bool], SessionScore]:
    state = model.new_state()
    decisive = [model.step(state, P[name]).decisive for name in names]
    return decisive, model.close(state, reason)


# --------------------------------------------------------------------- scores on hand-made sequences


@pytest.mark.parametrize("path", NORMAL)
def test_normal_sessions_are_not_flagged(model: SessionModel, path: tuple[str, ...]) -> None:
    decisive, result = run(model, path)
    assert not any(decisive)
    assert not result.is_anomaly and result.score <= 1.0
    assert not result.decisive


def test_a_missing_last_step_is_flagged_at_the_close_with_the_expected_step(model: SessionModel) -> None:
    decisive, result = run(model, ("start", "auth", "db"))
    assert not any(decisive), "nothing is wrong until the session goes quiet"
    assert result.is_anomaly and not result.decisive
    end = [s for s in result.unexpected if s.kind == "end"]
    assert len(end) == 1
    assert (end[0].position, end[0].pattern, end[0].previous, end[0].expected) == (
        3,
        END_CODE,
        P["db"],
        P["done"],
    )
    assert end[0].evidence > 0
    assert end[0].to_dict({P["done"]: "request done <NUM>"})["expected_template"] == "request done <NUM>"


def test_an_out_of_order_step_is_flagged_where_it_happens(model: SessionModel) -> None:
    _, result = run(model, ("start", "db", "auth", "done"))
    assert result.is_anomaly
    strongest = max(result.unexpected, key=lambda s: s.evidence)
    assert (strongest.kind, strongest.position, strongest.pattern, strongest.expected) == (
        "step",
        1,
        P["db"],
        P["auth"],
    )


def test_an_unseen_transition_is_decisive_at_once(model: SessionModel) -> None:
    decisive, result = run(model, ("start", "auth", "panic", "db", "done"))
    assert decisive[2], "a pattern never seen in training, in a context that always went on to db"
    assert not any(decisive[:2])
    assert result.is_anomaly and result.decisive
    assert result.unexpected[0].position == 2 and result.unexpected[0].previous == P["auth"]


def test_a_decisive_step_guarantees_the_close_verdict(model: SessionModel) -> None:
    """Whatever follows a decisive step, the close is anomalous (every evidence is >= 0)."""
    rng = random.Random(3)
    names = list(P)
    for _ in range(300):
        state = model.new_state()
        seen_decisive = False
        for _ in range(rng.randint(1, 12)):
            step = model.step(state, P[rng.choice(names)])
            seen_decisive |= step.decisive
            if seen_decisive:
                assert model.so_far(state).is_anomaly
        for reason in ("gap", "max_events", "evicted", "end_of_input"):
            result = model.close(state, reason)
            assert result.decisive == seen_decisive
            if seen_decisive:
                assert result.is_anomaly


def test_the_end_counts_only_for_sessions_that_went_quiet(model: SessionModel) -> None:
    for reason, has_end, has_counts in (
        ("gap", True, True),
        ("end_of_input", True, True),
        ("max_events", False, True),
        ("max_seconds", False, True),
        ("evicted", False, False),
    ):
        _, result = run(model, ("start", "auth", "db"), reason)
        assert ("end" in result.evidence) == has_end and ("counts" in result.evidence) == has_counts, reason
    _, evicted = run(model, ("start", "auth", "db"), "evicted")
    assert not evicted.is_anomaly, "an evicted session is scored on its steps only"
    with pytest.raises(ValueError, match="close reason"):
        run(model, ("start",), "bored")


def test_signatures_group_sessions_failing_the_same_way(model: SessionModel) -> None:
    _, a = run(model, ("start", "auth", "db"))
    _, b = run(model, ("start", "auth", "cache", "db"))
    _, c = run(model, ("start", "auth", "panic", "db", "done"))
    _, d = run(model, ("start", "auth", "panic", "done"))
    assert a.signature == b.signature, "both end after db instead of done"
    assert c.signature == d.signature, "both decided by auth -> panic"
    assert a.signature != c.signature
    assert all(len(s.signature) == 16 for s in (a, b, c, d))


# --------------------------------------------------------------------- calibration


def test_calibration_holds_the_target_rate_on_fresh_normal_sessions() -> None:
    fitted = SessionModel.fit(requests(2000, seed=1), windows=WINDOWS, target_fpr=0.01)
    fresh = requests(3000, seed=2)
    flagged = 0
    for session in fresh:
        state = fitted.new_state()
        for p in session.patterns:
            fitted.step(state, p)
        flagged += fitted.close(state, "gap").is_anomaly
    assert flagged / len(fresh) <= 0.01 * 1.5


def test_tail_matches_the_shared_tail_evidence() -> None:
    rng = np.random.default_rng(0)
    for name, null in (
        ("step", np.sort(rng.exponential(2.0, 400))),
        ("counts", np.sort(rng.integers(0, 6, 300).astype(float))),
        ("end", np.zeros(50)),
    ):
        scaled = _scaled(name, null)
        tail = _Tail(scaled)
        values = np.concatenate([null, rng.uniform(-1, 2 * null.max() + 3, 200)])
        expected = tail_evidence(scaled, _scaled(name, values))
        got = np.array([tail(float(x)) for x in _scaled(name, values)])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_fit_refuses_what_it_cannot_calibrate() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        SessionModel.fit(requests(1), windows=WINDOWS)
    with pytest.raises(ValueError, match="reason"):
        SessionModel.fit([SessionSequence((1, 2), "bored"), *requests(5)], windows=WINDOWS)
    with pytest.raises(ValueError, match="target_fpr"):
        SessionModel.fit(requests(5), windows=WINDOWS, target_fpr=0.0)
    with pytest.raises(ValueError, match="gap_seconds"):
        SessionWindows(gap_seconds=0)
    with pytest.raises(ValueError, match="max_seconds"):
        SessionWindows(gap_seconds=60, max_seconds=10)


# --------------------------------------------------------------------- bounds


def test_the_state_stays_bounded_however_long_the_session(model: SessionModel) -> None:
    state = model.new_state()
    for i in range(5000):
        model.step(state, pattern_hash(f"odd line {i % 400}"))
    assert len(state.counts) <= model.max_distinct + 1
    assert sum(state.counts.values()) == state.events == 5000
    assert len(state.unexpected) <= model.max_unexpected
    assert len(state.context) == model.order - 1
    assert model.close(state, "gap").is_anomaly


def test_the_model_itself_is_bounded() -> None:
    sessions = [
        SessionSequence(tuple(pattern_hash(f"p{(i * 7 + j) % 300}") for j in range(6))) for i in range(400)
    ]
    small = SessionModel.fit(sessions, windows=WINDOWS, max_vocab=50, max_contexts=40, max_reference=30)
    described = small.describe()
    assert (
        described["vocabulary"] == 50 and described["contexts"] <= 40 and described["reference_vectors"] <= 30
    )


# --------------------------------------------------------------------- persistence and the state codec


def test_save_and_load_give_the_same_verdicts(model: SessionModel, tmp_path: Path) -> None:
    written = model.save(tmp_path / "sessions")
    assert all(p.suffix in (".npy", ".json") for p in written)
    loaded = SessionModel.load(tmp_path / "sessions")
    assert loaded.fingerprint == model.fingerprint
    assert loaded.describe() == model.describe()
    for names in (*NORMAL, ("start", "auth", "db"), ("start", "db", "auth", "done"), ("auth", "panic")):
        assert run(loaded, names) == run(model, names)
    assert loaded.template(P["done"]) == "request done <NUM>"


def test_load_refuses_garbage(model: SessionModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        SessionModel.load(tmp_path / "nothing")
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "session_model.json").read_text())
    (tmp_path / "m" / "session_model.json").write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(ValueError, match="unsupported format"):
        SessionModel.load(tmp_path / "m")
    (tmp_path / "m" / "session_model.json").write_text(json.dumps(meta))
    np.save(tmp_path / "m" / "session_successors.npy", np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="disagree"):
        SessionModel.load(tmp_path / "m")


def test_state_round_trips_exactly_through_json(model: SessionModel) -> None:
    state = model.new_state()
    for name in ("start", "auth", "panic", "db", "db", "retry"):
        model.step(state, P[name])
    doc = json.loads(json.dumps(state_to_dict(state)))
    back = state_from_dict(doc, model)
    assert back == state
    assert model.close(back, "gap") == model.close(state, "gap")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "version"),
        ({"events": 0}, "events"),
        ({"events": 99}, "counts sum"),
        ({"counts": [[1, 1], [1, 2]]}, "repeated"),
        ({"counts": "x"}, "counts"),
        ({"max_surprise": "high"}, "max_surprise"),
        ({"max_surprise": -1.0}, "out of range"),
        ({"context": [10**6]}, "does not fit"),
        ({"unexpected": [[1.0, 0, 1, START_CODE]]}, "a step must be"),
        ({"unexpected": [[1.0, 99, 1, START_CODE, 1]]}, "beyond"),
        ({"decisive": [True, 0, 1, 1, 1]}, "surprise"),
    ],
)
def test_state_decoding_refuses_garbage(model: SessionModel, change: dict[str, object], message: str) -> None:
    state = model.new_state()
    for name in ("start", "auth"):
        model.step(state, P[name])
    doc = state_to_dict(state) | change
    with pytest.raises(ValueError, match=message):
        state_from_dict(doc, model)
    with pytest.raises(ValueError, match="JSON object"):
        state_from_dict([1, 2], model)


def test_surprises_are_finite_and_non_negative(model: SessionModel) -> None:
    state = model.new_state()
    for i in range(50):
        score = model.step(state, pattern_hash(f"never seen {i}"))
        assert 0.0 <= score.surprise < math.inf
