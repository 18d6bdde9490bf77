"""The pattern table: bounded LRU, per-model, exact lookups; score_patterns' dedup and failures; the
value view bound once per pattern and scored per event (event_score)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.config import load_settings
from agent.model.detectors import create_detector
from agent.model.examples import KnownPatterns
from agent.model.patterns import AlertContext, PatternScore, PatternTable, event_score, score_patterns
from agent.model.textprep import TextPreparation
from agent.model.values import ValueView
from agent.pipeline import Pipeline, load_model


def test_lru_bound_and_eviction_order() -> None:
    table = PatternTable("sha", max_entries=3)
    for i in range(3):
        table.put(f"t{i}", PatternScore(float(i), 0.0, 0))
    assert table.get("t0") == PatternScore(0.0, 0.0, 0)  # t0 is now the most recently used
    table.put("t3", PatternScore(3.0, 0.0, 0))
    assert len(table) == 3 and table.evictions == 1
    assert table.get("t1") is None, "the least recently used (t1) went first"
    assert table.get("t0") is not None and table.get("t3") is not None
    with pytest.raises(ValueError):
        PatternTable("sha", max_entries=0)


class _Embedder:
    dim = 4

    def __init__(self, broken: set[str] | None = None) -> None:
        self.calls: list[list[str]] = []
        self._broken = broken or set()

    def embed(
        self, texts: Sequence[str], progress: Callable[[], None] | None = None
    ) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        if self._broken & set(texts):
            raise RuntimeError("tokenizer choked")
        rows = [np.eye(4, dtype=np.float32)[hash(t) % 4] for t in texts]
        return np.stack(rows)


def _detector() -> object:
    detector = create_detector("knn", target_fpr=0.05, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    detector.fit(x / np.linalg.norm(x, axis=1, keepdims=True))
    return detector


def test_in_batch_dedup_embeds_each_distinct_missing_text_once_in_one_call() -> None:
    embedder, table = _Embedder(), PatternTable("sha")
    detector = _detector()
    first = score_patterns(["a", "b", "a", "a", "c"], embedder=embedder, detector=detector, table=table)  # type: ignore[arg-type]
    assert embedder.calls == [["a", "b", "c"]]
    assert first[0] == first[2] == first[3]
    second = score_patterns(["c", "d", "a", "d"], embedder=embedder, detector=detector, table=table)  # type: ignore[arg-type]
    assert embedder.calls[1:] == [["d"]], "known patterns are not embedded again"
    assert second[0] == first[4] and second[2] == first[0]
    assert (table.hits, table.misses) == (2 + 3, 3 + 1)


def test_without_a_table_nothing_is_remembered() -> None:
    embedder = _Embedder()
    detector = _detector()
    score_patterns(["a", "a"], embedder=embedder, detector=detector, table=None)  # type: ignore[arg-type]
    score_patterns(["a"], embedder=embedder, detector=detector, table=None)  # type: ignore[arg-type]
    assert embedder.calls == [["a"], ["a"]], "still deduplicated within a call"


def test_a_failing_text_is_isolated_and_not_stored() -> None:
    embedder, table = _Embedder(broken={"bad"}), PatternTable("sha")
    failures: dict[str, Exception] = {}
    out = score_patterns(
        ["ok", "bad", "ok2", "bad"],
        embedder=embedder,
        detector=_detector(),  # type: ignore[arg-type]
        table=table,
        on_failure=failures.__setitem__,
    )
    assert out[1] is None and out[3] is None and out[0] is not None and out[2] is not None
    assert list(failures) == ["bad"] and isinstance(failures["bad"], RuntimeError)
    assert table.get("bad") is None and table.get("ok") is not None
    with pytest.raises(RuntimeError):
        score_patterns(["bad2", "x"], embedder=_Embedder(broken={"bad2"}), detector=_detector(), table=None)  # type: ignore[arg-type]


def test_a_reloaded_model_starts_an_empty_table(agent_bundle: Path) -> None:
    """Nothing scored by the old model is used for the new one (no broker needed: the swap
    happens between batches, before any Kafka call)."""
    settings = load_settings(model={"bundle": agent_bundle, "watch": False})
    model = load_model(agent_bundle, intra_op_threads=1)
    pipeline = Pipeline(settings, model)
    table = pipeline.patterns
    assert table is not None and table.model_sha256 == model.bundle.sha256
    table.put("seen by the old model", PatternScore(9.0, 9.0, 0))
    pipeline.offer_model(load_model(agent_bundle, intra_op_threads=1))
    pipeline._swap_in_offered_model()
    assert pipeline.patterns is not table and pipeline.patterns is not None
    assert len(pipeline.patterns) == 0
    off = Pipeline(load_settings(model={"bundle": agent_bundle}, patterns={"enabled": False}), model)
    assert off.patterns is None


def test_with_a_value_view_each_pattern_is_bound_once_and_known_is_always_said() -> None:
    """``values=``: each computed pattern carries its BoundPattern (bound on the miss, kept by the
    table: a hit returns the same one); any event of any pattern may alert through its values, so
    ``known`` is filled for every pattern; ``event_score`` is the per-event call."""
    prep = TextPreparation()
    took = np.random.default_rng(0).integers(5, 95, size=400).tolist()
    pairs = [prep.prepare_values(f"request took {ms} ms") for ms in took]
    patterns, values = [p for p, _ in pairs], [v for _, v in pairs]
    view = ValueView.fit(patterns[:200], values[:200])
    view.calibrate(np.random.default_rng(1).exponential(0.3, 200), patterns[200:], values[200:], 0.05)
    embedder, table = _Embedder(), PatternTable("sha")
    context = AlertContext(known=KnownPatterns.from_texts(["request took <NUM> ms"]))
    texts = ["request took <NUM> ms", "other <NUM>", "request took <NUM> ms"]
    first = score_patterns(
        texts, embedder=embedder, detector=_detector(), table=table, values=view, context=context
    )  # type: ignore[arg-type]
    assert [r.known for r in first if r] == [True, False, True]
    assert all(r is not None and r.values is not None for r in first)
    assert first[0] is first[2]
    again = score_patterns(texts[:1], embedder=embedder, detector=_detector(), table=table, values=view)  # type: ignore[arg-type]
    assert again[0] is first[0] and len(embedder.calls) == 1, "a hit: nothing embedded, nothing bound again"
    hit = first[0]
    assert hit is not None and hit.values is not None
    quiet = event_score(hit, prep.prepare_values("request took 50 ms")[1])
    assert quiet == (hit.values.base_score, None)
    score, finding = event_score(hit, prep.prepare_values("request took 90000 ms")[1])
    assert score > 1.0 and finding is not None and finding.value == "90000"
    assert (score, finding) == hit.values.decide(("90000",)) and score == hit.values.score(("90000",))
    plain = PatternScore(0.7, 0.1, 0)
    assert event_score(plain, prep.prepare_values("request took 90000 ms")[1]) == (0.7, None)
