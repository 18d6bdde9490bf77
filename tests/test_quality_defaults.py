"""train's defaults are the documented ones (docs/detectors.md), which bench/quality.py chose.

The docs say which detector ``train`` fits by default and why (the best worst case over every
dev set); a default changed in code but not in the docs, or the other way round, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.cli import build_parser
from agent.defaults import DEFAULT_CALIBRATION_SPLIT, DEFAULT_DETECTOR
from agent.detectors import DETECTORS

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
