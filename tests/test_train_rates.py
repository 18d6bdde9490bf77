"""``train --time-field``: the training templates' rate baselines in the bundle (rates.json)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from agent_helpers import cli

from agent.alerts.partition_rates import RatePartitions, template_id
from agent.config import RateSettings
from agent.model.bundle import load_bundle
from training.rates import event_time_ms, rate_seeds
from training.records import InputError, Record


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_795_369_767, 1_795_369_767_000),  # epoch seconds
        (1_795_369_767.412, 1_795_369_767_412),
        (1_795_369_767_412, 1_795_369_767_412),  # epoch milliseconds
        ("1795369767", 1_795_369_767_000),
        ("2026-11-22T17:49:27.412Z", 1_795_369_767_412),
        ("2026-11-22T18:49:27.412+01:00", 1_795_369_767_412),
        ("2026-11-22 17:49:27.412", 1_795_369_767_412),  # no zone: UTC
        ("yesterday", None),
        ("", None),
        (True, None),
        (-5, None),
        (None, None),
        (float("nan"), None),
    ],
)
def test_event_times_are_epoch_numbers_or_iso_8601(value: object, expected: int | None) -> None:
    assert event_time_ms(value) == expected


def test_a_normal_record_without_a_time_is_refused_naming_its_line() -> None:
    records = [Record(1, {"text": "a", "ts": 1_795_369_767}), Record(2, {"text": "b"})]
    with pytest.raises(InputError, match=r"in.jsonl:2: --time-field ts"):
        rate_seeds(records, ["a", "b"], [0, 1], "ts", Path("in.jsonl"))


def _hdfs_times(line: str) -> int:
    return round(datetime.strptime("20" + line[:13], "%Y%m%d %H%M%S").timestamp() * 1000)


@pytest.mark.slow
def test_train_with_a_time_field_seeds_every_template_that_covers_the_warm_up(
    datasets_dir: Path, embedder_dir: Path, tmp_path: Path
) -> None:
    """Two days of HDFS lines (the loghub sample spans 081109-081111): every template's baseline
    is in rates.json, the manifest says what was learned, and the agent takes the seeds of the
    templates seen for at least the warm-up."""
    lines = (datasets_dir / "hdfs_2k" / "HDFS_2k.log").read_text().splitlines()
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "at": _hdfs_times(t)}) + "\n" for t in lines))
    out = tmp_path / "bundle"
    result = cli(
        "train", "--input", str(train), "--detector", "knn", "--time-field", "at",
        "--embedder", str(embedder_dir), "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(out)
    assert bundle.rate_seeds is not None
    learned = bundle.manifest["training"]["rates"]
    assert learned["time_field"] == "at" and learned["templates"] == len(bundle.rate_seeds["baselines"])
    assert learned["first_event"].startswith("2008-11-09") and learned["covers_warmup"]
    prepared = {bundle.text_prep.prepare(t) for t in lines}
    assert set(bundle.rate_seeds["baselines"]) <= {template_id(p) for p in prepared}
    used = RatePartitions(RateSettings()).use_seeds(bundle.rate_seeds)
    assert 0 < used <= learned["templates"], "templates seen over the day-long warm-up seed keys"

    bad = cli(
        "train",
        "--input",
        str(train),
        "--time-field",
        "nope",
        "--embedder",
        str(embedder_dir),
        "--out",
        str(tmp_path / "b2"),
    )
    assert bad.returncode != 0 and "--time-field nope" in bad.stderr
