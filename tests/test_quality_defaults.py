"""train's defaults are the documented ones (docs/detectors.md), which bench/quality.py chose.

The docs say which detector ``train`` fits by default and why (the best worst case over every
dev set); a default changed in code but not in the docs, or the other way round, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.cli import build_parser
from agent.model.defaults import DEFAULT_CALIBRATION_SPLIT, DEFAULT_DETECTOR
from agent.model.detectors import DETECTORS

DOCS = Path(__file__).resolve().parent.parent / "docs" / "detectors.md"


def _documented(label: str) -> str:
    found = re.findall(rf"^\*\*{label}: `([a-z0-9-]+)`\*\*", DOCS.read_text(encoding="utf-8"), re.M)
    assert len(found) == 1, f"docs/detectors.md must state '**{label}: `...`**' once, found {found}"
    return found[0]


def test_train_fits_the_documented_default_detector() -> None:
    args = build_parser().parse_args(["train", "--input", "x.jsonl", "--out", "b"])
    assert args.detector == DEFAULT_DETECTOR == _documented("Default detector")
    assert DEFAULT_DETECTOR in DETECTORS


def test_train_calibrates_on_the_documented_split_and_decides_masking() -> None:
    args = build_parser().parse_args(["train", "--input", "x.jsonl", "--out", "b"])
    assert args.calibration_split == DEFAULT_CALIBRATION_SPLIT == _documented("Default calibration split")
    assert args.mask is None  # decided by training.masking unless --mask / --no-mask
    forced = build_parser().parse_args(
        ["train", "--input", "x", "--out", "b", "--no-mask", "--calibration-split", "tail"]
    )
    assert forced.mask is False and forced.calibration_split == "tail"


def test_every_detector_is_in_the_quality_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in DETECTORS:
        assert f"| {name}" in text, f"docs/detectors.md quality table has no row for {name}"


def test_quality_summary_ranks_by_worst_gap_to_the_better_anchor() -> None:
    import sys

    sys.path.insert(0, str(DOCS.parent.parent / "bench"))
    from quality import DEFAULT_CANDIDATE, TARGET_GAP, summarize

    def row(dataset: str, candidate: str, auroc: float, **extra: object) -> dict[str, object]:
        base = {"mask_by_rule": True, "labels": False, "test_normal_fpr": 0.01}
        return base | {"dataset": dataset, "candidate": candidate, "auroc": auroc} | extra

    results = [
        row("a", "kmeans", 0.60), row("b", "kmeans", 0.95),
        row("a", "steady", 0.85), row("b", "steady", 0.93),
        row("a", "spiky", 0.90), row("b", "spiky", 0.70),
        row("a", DEFAULT_CANDIDATE, 0.895), row("b", DEFAULT_CANDIDATE, 0.96),
        row("a", "other view", 0.99, mask_by_rule=False),  # not what train would fit: ignored
        row("a", "with labels", 0.99, labels=True),  # needs labels: ignored
    ]  # fmt: skip
    anchors = {"a": {"better": 0.90}, "b": {"better": 0.94}}
    summary = summarize(results, ["a", "b"], anchors)
    assert summary["better_anchor"] == {"a": 0.90, "b": 0.94}
    # worst gaps to the better anchor: default 0.005, steady 0.05, spiky 0.24, kmeans 0.30
    assert summary["by_worst_case"] == [DEFAULT_CANDIDATE, "steady", "spiky", "kmeans"]
    steady = summary["candidates"]["steady"]
    assert steady["gap_to_anchor"] == {"a": 0.05, "b": 0.01} and steady["worst_set"] == "a"
    assert not steady["meets_target"] and steady["vs_seeds"] == -0.02  # 0.93 - 0.95 on b
    default = summary["default"]
    assert default["worst_gap"] == 0.005 <= TARGET_GAP and default["meets_target"]
    assert default["gap_to_best"] == {"a": 0.005, "b": 0.0}


def test_train_fits_the_documented_value_view_and_masks_with_it() -> None:
    """With the value view (the default) train keeps both views: masked text for the detector, the
    values for the view (training.masking's rule); --no-value-view falls back to the merge rule."""
    from agent.model.textprep import TextPreparation
    from training.masking import decide_mask

    args = build_parser().parse_args(["train", "--input", "x.jsonl", "--out", "b"])
    assert args.value_view is True and _documented("Default value view") == "on"
    off = build_parser().parse_args(["train", "--input", "x.jsonl", "--out", "b", "--no-value-view"])
    assert off.value_view is False
    prose = [f"i feel {w} today" for w in ("happy", "sad", "tired", "calm")]
    assert decide_mask(prose, TextPreparation(), args.mask, value_view=args.value_view).mask
    assert not decide_mask(prose, TextPreparation(), off.mask, value_view=off.value_view).mask
