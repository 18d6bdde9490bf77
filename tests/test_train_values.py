"""The value view through the CLI (issue 19): ``train`` fits it by default and stores it in the
bundle; ``score`` and ``evaluate`` score each record's own values exactly as the agent does
(``agent.model.patterns.event_score`` on a pattern-table hit), so an out-of-range number or a
traversal path in an otherwise known pattern is flagged with a ``value`` finding. Real HDFS lines
(``hdfs_2k``), the real ONNX embedder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli_training import run_cli

from agent.model.bundle import load_bundle
from agent.model.patterns import PatternTable, event_score, score_patterns
from agent.model.textprep import SlotValues, TextPreparation
from agent.model.values import ValueView

N_TRAIN = 1000
TRAVERSAL = "../../../../../../etc/passwd"
HUGE = "670000000000000"


@pytest.fixture(scope="module")
def hdfs(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> dict[str, Any]:
    """The first 1,000 lines of the HDFS sample to train on; probes: two known training lines and
    each with one value changed (a traversal for the allocated file's path, a block size far
    beyond any seen)."""
    d = tmp_path_factory.mktemp("hdfs_values")
    lines = (datasets_dir / "hdfs_2k" / "HDFS_2k.log").read_text(encoding="utf-8").splitlines()[:N_TRAIN]
    (d / "train.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    allocate = next(line for line in lines if "NameSystem.allocateBlock: /" in line)
    received = next(line for line in lines if "Received block" in line and "of size 67108864" in line)
    probes = [
        ("normal", allocate),
        ("traversal", re.sub(r"allocateBlock: \S+", f"allocateBlock: {TRAVERSAL}", allocate)),
        ("normal", received),
        ("huge", received.replace("of size 67108864", f"of size {HUGE}")),
    ]
    with (d / "probes.jsonl").open("w", encoding="utf-8") as fh:
        for label, text in probes:
            fh.write(json.dumps({"message": text, "label": label}) + "\n")
    return {"dir": d, "lines": lines, "probes": probes}


def _train(hdfs: dict[str, Any], embedder_dir: Path, out: Path, *flags: str) -> dict[str, Any]:
    code, stdout, stderr = run_cli(
        "train", "--input", hdfs["dir"] / "train.log", "--embedder", embedder_dir, "--out", out, *flags
    )
    assert code == 0, stderr
    summary: dict[str, Any] = json.loads(stdout)
    return summary


@pytest.fixture(scope="module")
def trained(hdfs: dict[str, Any], embedder_dir: Path) -> dict[str, Any]:
    out = hdfs["dir"] / "bundle"
    return {"bundle": out, "summary": _train(hdfs, embedder_dir, out), "lines": hdfs["lines"]}


def _score(bundle: Path, probes: Path, *flags: str) -> list[dict[str, Any]]:
    code, stdout, stderr = run_cli(
        "score", "--bundle", bundle, "--input", probes, "--text-field", "message", *flags
    )
    assert code == 0, stderr
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.slow
def test_train_fits_the_value_view_by_default(trained: dict[str, Any]) -> None:
    summary = trained["summary"]
    training, evaluation = summary["training"], summary["evaluation"]
    assert summary["text_preparation"]["mask"] is True
    assert training["masking"]["rule"].startswith("auto: mask, and the value view")
    view = training["value_view"]
    assert view["fitted"] is True and view["patterns"] > 0 and view["slots"] > view["patterns"]
    assert view["target_fpr"] == evaluation["target_fpr"] == 0.01
    assert evaluation["value_view"] is True
    assert evaluation["validation_records"] == round(0.2 * N_TRAIN)
    assert 0.0 <= evaluation["validation_fpr"] <= 0.05
    assert 0.0 <= evaluation["validation_fpr_without_values"] <= 0.05
    bundle = load_bundle(trained["bundle"])
    assert bundle.values is not None and bundle.values.n_slots == view["slots"]
    assert bundle.values.threshold == view["threshold"]
    assert "values/values.json" in bundle.manifest["files"]
    assert bundle.manifest["training"]["value_view"] == view


@pytest.mark.slow
def test_score_flags_an_unusual_value_of_a_known_pattern(
    trained: dict[str, Any], hdfs: dict[str, Any]
) -> None:
    rows = _score(trained["bundle"], hdfs["dir"] / "probes.jsonl")
    allocate, traversal, received, huge = rows
    for normal, odd in ((allocate, traversal), (received, huge)):
        assert odd["text"] == normal["text"], "one pattern: only the value differs"
        assert odd["pattern_score"] == normal["pattern_score"] <= 1.0, "the pattern alone is normal"
        assert not normal["is_anomaly"] and normal["value"] is None
        assert odd["is_anomaly"] and odd["score"] > 1.0
    assert traversal["value"]["placeholder"] == "<PATH>" and traversal["value"]["value"] == TRAVERSAL
    assert traversal["value"]["expected"]["feature"] == "dotdot"
    assert traversal["value"]["expected"]["range"] == [0.0, 0.0]
    assert huge["value"]["placeholder"] == "<NUM>" and huge["value"]["value"] == HUGE
    assert huge["value"]["expected"]["feature"] == "magnitude"
    assert huge["value"]["expected"]["range"][1] < float(HUGE)
    # Exactly what the agent computes: prepare_values, the pattern table (bound on the miss), event_score.
    bundle = load_bundle(trained["bundle"])
    embedder = bundle.load_embedder(intra_op_threads=1)
    table = PatternTable(bundle.sha256)
    prepared = [bundle.text_prep.prepare_values(text) for _, text in hdfs["probes"]]
    results = score_patterns(
        [p for p, _ in prepared],
        embedder=embedder,
        detector=bundle.detector,
        table=table,
        values=bundle.values,
    )
    for row, result, (text, values) in zip(rows, results, prepared, strict=True):
        assert result is not None and row["text"] == text
        score, finding = event_score(result, values)
        assert row["score"] == pytest.approx(score, rel=1e-6)
        assert row["value"] == (None if finding is None else finding.to_dict())
    # Without the pattern table (every record on its own): the same decisions and findings.
    plain = _score(trained["bundle"], hdfs["dir"] / "probes.jsonl", "--no-patterns")
    assert [(r["is_anomaly"], r["value"]) for r in plain] == [(r["is_anomaly"], r["value"]) for r in rows]


@pytest.mark.slow
def test_evaluate_counts_the_value_anomalies(trained: dict[str, Any], hdfs: dict[str, Any]) -> None:
    code, stdout, stderr = run_cli(
        "evaluate", "--bundle", trained["bundle"], "--input", hdfs["dir"] / "probes.jsonl",
        "--text-field", "message", "--label-field", "label", "--normal-labels", "normal",
    )  # fmt: skip
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["counts"] == {
        "n": 4, "normal": 2, "anomalous": 2, "flagged": 2, "tp": 2, "fp": 0, "fn": 0, "tn": 2,
    }  # fmt: skip
    assert result["auroc"] == 1.0
    assert result["per_label"]["traversal"]["flagged"] == result["per_label"]["huge"]["flagged"] == 1


@pytest.mark.slow
def test_no_value_view_and_no_mask_leave_it_out(hdfs: dict[str, Any], embedder_dir: Path) -> None:
    """``--no-value-view``: masking falls back to the merge rule (logs: masked) and each record scores
    as its pattern; ``--no-mask``: raw text has no placeholder, so nothing hidden to score."""
    out = hdfs["dir"] / "plain"
    summary = _train(hdfs, embedder_dir, out, "--no-value-view")
    assert summary["training"]["value_view"] == {"fitted": False, "reason": "--no-value-view"}
    assert summary["training"]["masking"]["rule"].startswith("auto without the value view")
    assert summary["text_preparation"]["mask"] is True
    assert "validation_fpr_without_values" not in summary["evaluation"]
    assert load_bundle(out).values is None
    rows = _score(out, hdfs["dir"] / "probes.jsonl")
    assert all(r["score"] == r["pattern_score"] and r["value"] is None for r in rows)
    assert rows[0]["score"] == rows[1]["score"], "masked, without the value view: blind to the traversal"

    raw = hdfs["dir"] / "raw"
    summary = _train(hdfs, embedder_dir, raw, "--no-mask")
    assert summary["text_preparation"]["mask"] is False
    assert summary["training"]["masking"]["rule"] == "--no-mask"
    assert summary["training"]["value_view"]["fitted"] is False
    assert "not masked" in summary["training"]["value_view"]["reason"]
    assert load_bundle(raw).values is None


@pytest.mark.slow
def test_the_next_days_normal_lines_stay_quiet(
    trained: dict[str, Any], datasets_dir: Path, tmp_path: Path
) -> None:
    """HDFS lines start with the date and time as numbers (``081109 203531``): the day after the
    training data, every date is one training never saw. A category test on it would flag every
    line (it did: 760 of these 1,000); the order check keeps no test on a field that follows the
    input's order, so the next day's lines alert about as often as the target says."""
    later = (datasets_dir / "hdfs_2k" / "HDFS_2k.log").read_text(encoding="utf-8").splitlines()[N_TRAIN:]
    assert {line[:6] for line in later} - {line[:6] for line in trained["lines"]}, "days training never saw"
    (tmp_path / "later.log").write_text("\n".join(later) + "\n", encoding="utf-8")
    code, stdout, stderr = run_cli("score", "--bundle", trained["bundle"], "--input", tmp_path / "later.log")
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert len(rows) == len(later)
    assert sum(r["is_anomaly"] for r in rows) / len(rows) <= 0.05
    assert not any(r["value"] is not None and r["value"]["slot"] in (0, 1) for r in rows), "date or time"
    bundle = load_bundle(trained["bundle"])
    assert bundle.values is not None and bundle.values.order_dropped


def _slot_values(texts: list[str]) -> tuple[list[str], list[SlotValues]]:
    pairs = [TextPreparation().prepare_values(t) for t in texts]
    return [p for p, _ in pairs], [v for _, v in pairs]


def test_the_order_check_keeps_no_test_on_a_clock() -> None:
    """A slot whose values follow the input's order (a day, a counter) keeps no test; a slot whose
    values come in any order keeps its range and categories; a field shared by every pattern's
    header is judged across them, so a pattern that saw one day only does not flag the next."""
    rng = np.random.default_rng(0)
    texts = []
    for i in range(600):
        day = 20260101 + i // 200  # three days, in order
        status = rng.choice(["200", "304"])
        if i < 500:
            served = f"served in {int(rng.integers(5, 200))} ms status {status}"
            texts.append(f"{day} request {int(rng.integers(1, 300))} {served}")
        else:  # a pattern of the last day only: its day slot saw one value
            texts.append(f"{day} cache flushed {int(rng.integers(1, 300))} entries")
    patterns, values = _slot_values(texts)
    view = ValueView.fit(patterns, values)
    view.calibrate(np.zeros(len(patterns)), patterns, values, 0.01)
    assert view.order_dropped is not None and view.order_dropped >= 3

    def finding(text: str) -> dict[str, Any] | None:
        pattern, slot_values = TextPreparation().prepare_values(text)
        found = view.bind(pattern, 0.0).explain(slot_values.values)
        return None if found is None else found.to_dict()

    assert finding("20260104 request 17 served in 50 ms status 200") is None, "tomorrow is no anomaly"
    assert finding("20260104 cache flushed 12 entries") is None, "nor for the pattern that saw one day"
    slow = finding("20260103 request 17 served in 90000 ms status 200")
    assert slow is not None and slow["slot"] == 2 and slow["expected"]["feature"] == "magnitude"
    status = finding("20260103 request 17 served in 50 ms status 500")
    assert status is not None and status["slot"] == 3 and status["expected"]["values"] == ["200", "304"]
    # A pattern training never saw falls back to the pooled slots, without the header's clock tests.
    assert finding("20260104 request 17 retried 3 times") is None
    shuffled = [texts[i] for i in rng.permutation(500)]
    patterns, values = _slot_values(shuffled)
    assert ValueView.fit(patterns, values).order_dropped == 0, "no order, nothing dropped"
