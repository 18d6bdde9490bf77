"""The value view (agent/model/values.py): each slot descriptor flags what it should against normal
values of the same pattern and leaves normal values alone; the combined calibration keeps its
target; the saved view scores exactly like the fitted one; it fits beside a real fused detector.

Per-event cost is measured by bench/quality.py (``value_view_cost``), never asserted here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.model.detectors.fused import FusedDetector
from agent.model.examples import pattern_hash
from agent.model.textprep import SlotValues, TextPreparation
from agent.model.values import (
    ARRAYS,
    DEFAULT_MAX_SLOTS,
    MIN_VALUES,
    BoundPattern,
    ValueView,
    fit_value_view,
)

PREP = TextPreparation()
#: more pages than a category test keeps: the URL slot's own values are not categorical, its origin is.
PAGES = [f"{a}-{b}" for a in ("cart", "home", "help", "shop", "deals") for b in ("new", "top", "all", "sale")]
TARGET_FPR = 0.02
# Pattern scores of a detector calibrated to the target: P(score > 1) = TARGET_FPR.
DETECTOR_SCALE = 1.0 / np.log(1.0 / TARGET_FPR)


def _normal_events(n: int, seed: int) -> list[str]:
    """Four log templates whose values vary the way normal traffic's do."""
    rng = np.random.default_rng(seed)
    files = ["/img/a.png", "/img/b.png", "/css/site.css", "/js/app.js", "/img/logo.png"]
    out = []
    for _ in range(n):
        kind = int(rng.integers(4))
        if kind == 0:
            out.append(
                f"request served in {int(rng.integers(5, 200))} ms status {rng.choice(['200', '304'])}"
            )
        elif kind == 1:
            out.append(
                f"GET file {rng.choice(files)} from 10.0.{int(rng.integers(4))}.{int(rng.integers(1, 250))}"
            )
        elif kind == 2:
            out.append(f"disk {int(rng.integers(10, 60))}% full")
        else:
            out.append(f"redirect to https://shop.example.com/{rng.choice(PAGES)}")
    return out


def _prepared(texts: list[str]) -> tuple[list[str], list[SlotValues]]:
    pairs = [PREP.prepare_values(t) for t in texts]
    return [p for p, _ in pairs], [v for _, v in pairs]


@pytest.fixture(scope="module")
def view() -> ValueView:
    patterns, values = _prepared(_normal_events(4000, seed=0))
    fitted = ValueView.fit(patterns, values)
    held_patterns, held_values = _prepared(_normal_events(1000, seed=1))
    scores = np.random.default_rng(2).exponential(DETECTOR_SCALE, size=len(held_patterns))
    fitted.calibrate(scores, held_patterns, held_values, TARGET_FPR)
    return fitted


def _bound(view: ValueView, text: str) -> tuple[BoundPattern, SlotValues]:
    pattern, values = PREP.prepare_values(text)
    return view.bind(pattern, 0.3), values


@pytest.mark.parametrize(
    ("anomalous", "normal", "slot", "expected_key"),
    [
        # a traversal path against the file paths of the same pattern
        ("GET file ../../../etc/passwd from 10.0.1.5", "GET file /img/b.png from 10.0.1.5", 0, "feature"),
        # an out-of-range number: 30 s where training saw 5-199 ms
        ("request served in 30000 ms status 200", "request served in 120 ms status 200", 0, "feature"),
        # a value of a low-cardinality slot never seen: status 500 where training saw 200 and 304
        ("request served in 50 ms status 500", "request served in 50 ms status 304", 1, "values"),
        # an unseen origin of a URL slot
        ("redirect to https://shop.evil.net/cart-new", "redirect to https://shop.example.com/cart-new", 0,
         "origin"),
    ],
)  # fmt: skip
def test_a_value_anomaly_is_flagged_against_normal_values_of_its_pattern(
    view: ValueView, anomalous: str, normal: str, slot: int, expected_key: str
) -> None:
    bad, bad_values = _bound(view, anomalous)
    good, good_values = _bound(view, normal)
    assert bad.slots > 0 and good.evidence(good_values.values) == 0.0
    assert bad.evidence(bad_values.values) > 0.0
    assert bad.score(bad_values.values) > 1.0 >= good.score(good_values.values)
    finding = bad.explain(bad_values.values)
    assert finding is not None and finding.slot == slot and finding.value == bad_values.values[slot]
    assert expected_key in finding.expected and finding.expected["seen"] >= MIN_VALUES
    assert set(finding.to_dict()) == {"slot", "placeholder", "value", "expected"}
    assert good.explain(good_values.values) is None


def test_the_out_of_range_number_says_what_normal_looks_like(view: ValueView) -> None:
    bound, values = _bound(view, "request served in 30000 ms status 200")
    finding = bound.explain(values.values)
    assert finding is not None
    assert finding.expected["feature"] == "magnitude" and finding.expected["observed"] == pytest.approx(30000)
    low, high = finding.expected["range"]
    assert 5 <= low < high < 200


def test_normal_values_stay_quiet(view: ValueView) -> None:
    patterns, values = _prepared(_normal_events(2000, seed=5))
    evidence = [view.bind(p, 0.0).evidence(v.values) for p, v in zip(patterns, values, strict=True)]
    assert np.mean(np.asarray(evidence) > 0) < 0.02


def test_the_combined_threshold_holds_the_target_on_held_out_events(view: ValueView) -> None:
    """Fresh normal events with fresh pattern scores (from a detector calibrated to the target, as
    train's are): the alert rate with the values is still the target's, give or take."""
    patterns, values = _prepared(_normal_events(5000, seed=7))
    scores = np.random.default_rng(8).exponential(DETECTOR_SCALE, size=len(patterns))
    final = [view.bind(p, s).score(v.values) for p, v, s in zip(patterns, values, scores, strict=True)]
    assert 0.5 * TARGET_FPR <= np.mean(np.asarray(final) > 1.0) <= 2.0 * TARGET_FPR


def test_without_value_evidence_the_score_is_monotone_in_the_pattern_score(view: ValueView) -> None:
    pattern, values = PREP.prepare_values("a pattern training never saw")
    scores = [view.bind(pattern, s).score(values.values) for s in (0.0, 0.5, 1.0, 2.0, 8.0)]
    assert scores == sorted(scores) and scores[-1] > 1.0


def test_an_undescribed_pattern_falls_back_to_the_pooled_slot_of_its_placeholder(view: ValueView) -> None:
    """A traversal in a pattern training never saw is still a path with '..'."""
    bound, values = _bound(view, "POST upload ../../etc/shadow by 10.0.2.9")
    assert bound.slots == 2 and bound.evidence(values.values) > 0.0
    benign, benign_values = _bound(view, "POST upload /img/a.png by 10.0.2.9")
    assert benign.evidence(benign_values.values) == 0.0


def test_values_that_do_not_fit_the_pattern_add_nothing(view: ValueView) -> None:
    bound, values = _bound(view, "request served in 30000 ms status 200")
    assert values.values is not None
    assert bound.evidence(values.values[:1]) == 0.0  # a literal "<NUM>" in the raw text
    assert bound.evidence(None) == 0.0  # values that could not be read
    assert bound.explain(None) is None


def test_save_and_load_score_identically(view: ValueView, tmp_path: Path) -> None:
    written = view.save(tmp_path)
    assert {p.name for p in written} == {f"values.{n}.npy" for n in ARRAYS} | {"values.json"}
    for path in written:
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)  # no pickled object arrays
    again = ValueView.load(tmp_path)
    assert (again.n_patterns, again.n_slots) == (view.n_patterns, view.n_slots)
    assert again.threshold == view.threshold
    for text in [*_normal_events(200, seed=9), "GET file ../../x from 10.0.0.1", "disk 99% full"]:
        a, values = _bound(view, text)
        b, _ = _bound(again, text)
        assert a.score(values.values) == b.score(values.values)
        assert a.explain(values.values) == b.explain(values.values)


def test_restore_refuses_an_unknown_format(view: ValueView) -> None:
    with pytest.raises(ValueError, match="format"):
        ValueView.restore(view.arrays(), view.meta() | {"format": 99})
    with pytest.raises(ValueError, match="threshold"):
        ValueView.restore(view.arrays(), view.meta() | {"threshold": 0.0})


def test_storage_is_bounded_and_keyed_by_hash() -> None:
    texts = [f"job w{j} took {i} ms" for j in range(50) for i in range(10)]  # 50 patterns of one slot
    patterns, values = _prepared(texts)
    capped = ValueView.fit(patterns, values, max_slots=7)
    assert capped.n_patterns == 7 and DEFAULT_MAX_SLOTS > 7
    capped.calibrate(np.zeros(len(patterns)), patterns, values, TARGET_FPR)
    assert set(capped.arrays()["keys"].tolist()) <= {pattern_hash(p) for p in patterns}
    few = ValueView.fit(patterns[: MIN_VALUES - 1], values[: MIN_VALUES - 1])
    assert few.n_patterns == 0
    assert pattern_hash("job w1 took <NUM> ms") != pattern_hash("job w2 took <NUM> ms")


def test_unmasked_text_has_no_values() -> None:
    prepared, values = TextPreparation(mask=False).prepare_values("disk 99% full")
    assert prepared == "disk 99% full" and values == SlotValues((), ())


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_fit_value_view_beside_a_fused_detector() -> None:
    """Slots from the detector's fit part, the threshold from its held-out part (leave-one-out
    pattern scores): a value anomaly of a known pattern alerts, its normal twin does not."""
    texts = _normal_events(1500, seed=11)
    patterns, values = _prepared(texts)
    vectors = _unit(len(texts), 12)
    detector = FusedDetector(target_fpr=TARGET_FPR)
    detector.fit(vectors, texts=patterns)
    assert detector.held_out_scores is not None
    fitted = fit_value_view(detector, vectors, None, patterns, values)
    assert fitted is not None and fitted.target_fpr == TARGET_FPR
    pattern, normal = PREP.prepare_values("request served in 50 ms status 200")
    _, odd = PREP.prepare_values("request served in 90000 ms status 200")
    row = patterns.index(pattern)
    known = float(detector.score(vectors[row : row + 1], [pattern]).score[0])
    bound = fitted.bind(pattern, known)
    assert bound.score(normal.values) <= 1.0 < bound.score(odd.values)
    assert fit_value_view(detector, vectors, None, patterns, [SlotValues((), ())] * len(patterns)) is None


def test_the_fast_path_is_the_exact_evidence(view: ValueView) -> None:
    """``_checker`` skips the logarithm only where the exact computation gives the same."""
    from agent.model.values import _checker, _slot_evidence

    texts = [*_normal_events(500, seed=13), "request served in 4 ms status 200", "disk 9% full",
             "request served in 200 ms status 500", "GET file /img/a.png from 10.9.0.1", "disk 1e5% full",
             "request served in 199 ms status 304", "disk 10% full", "disk 59% full"]  # fmt: skip
    checked = 0
    for text in texts:
        pattern, values = PREP.prepare_values(text)
        assert values.values is not None
        for slot in view._lookup(pattern)[0]:
            value = values.values[slot.position]
            assert _checker(slot)(value) == _slot_evidence(slot, value), (text, slot.position)
            checked += 1
    assert checked > 500


def test_a_pattern_table_hit_scores_like_a_fresh_bind_in_any_order(view: ValueView) -> None:
    """What the agent's table keeps (one BoundPattern per pattern, bound on the miss) gives every
    event the score a fresh bind gives it, whatever else the batch holds and in whatever order."""
    texts = [*_normal_events(300, seed=15), "request served in 30000 ms status 200", "disk 99% full"]
    table: dict[str, BoundPattern] = {}
    hits = []
    for text in reversed(texts):
        pattern, values = PREP.prepare_values(text)
        bound = table.setdefault(pattern, view.bind(pattern, 0.4))
        hits.append(bound.score(values.values))
    fresh = [view.bind(p, 0.4).score(v.values) for p, v in map(PREP.prepare_values, texts)]
    assert hits[::-1] == fresh


def test_a_pattern_anomalous_on_its_own_keeps_the_detector_s_score(view: ValueView) -> None:
    """A tail probability flattens everything past the held-out maximum: the fused score must not
    pull a pattern at 2.5 times its threshold back to the threshold, and values only add."""
    pattern, values = PREP.prepare_values("request served in 35 ms status 200")
    for score in (1.01, 2.5, 40.0):
        strong = view.bind(pattern, score)
        assert strong.score(values.values) >= score and strong.decide(values.values)[0] >= score
    assert view.bind(pattern, 40.0).score(values.values) == pytest.approx(40.0)
