"""The dev splits bench/quality.py measures: sizes, disjoint classes, no label in the text."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import devdata


@pytest.mark.parametrize("name", devdata.DATASET_NAMES)
def test_every_split_has_normal_training_data_and_both_kinds_in_test(name: str, datasets_dir: Path) -> None:
    split = devdata.load(name, datasets_dir)
    assert split.train_records and set(split.train_labels) <= set(split.normal_labels)
    truth = split.test_is_anomaly
    assert 0 < truth.sum() < len(truth)
    for record in split.train_records[:50] + split.test_records[:50]:
        assert "label" not in record and set(split.text_fields) <= set(record)


def test_clinc_domains_hold_out_whole_domains(datasets_dir: Path) -> None:
    split = devdata.load("clinc150-domains", datasets_dir)
    novel = devdata.held_out_clinc_domains(datasets_dir)
    assert len(novel) == 3 and "oos" not in split.test_labels
    anomalous = {label for label, a in zip(split.test_labels, split.test_is_anomaly, strict=True) if a}
    assert anomalous and not anomalous & set(split.train_labels)


def test_logs_split_trains_on_two_systems_and_flags_the_third(datasets_dir: Path) -> None:
    split = devdata.load("logs", datasets_dir)
    assert set(split.train_labels) == {"thunderbird", "hdfs"}
    assert split.train_labels[:2] == ["thunderbird", "hdfs"]  # interleaved like one stream
    assert {label for label, a in zip(split.test_labels, split.test_is_anomaly, strict=True) if a} == {"bgl"}
    assert not any(r["line"].startswith("- ") for r in split.train_records)


def test_payload_sets_are_the_stated_generator_and_agree_with_each_other(datasets_dir: Path) -> None:
    lines = devdata.load("payloads", datasets_dir)
    values = devdata.load("payload-values", datasets_dir)
    assert len(lines.train_records) == len(values.train_records) == 4_000
    assert lines.test_labels == values.test_labels and sum(lines.test_is_anomaly) == 500
    for line, value in zip(lines.test_records, values.test_records, strict=True):
        assert value["text"] in line["text"]  # the value is one parameter of the same request
    benign, attacks = devdata.payload_requests(datasets_dir, n_benign=50, n_attacks=50)
    assert (benign, attacks) == devdata.payload_requests(datasets_dir, n_benign=50, n_attacks=50)
    assert all(line.split(" ", 1)[0] in ("GET", "POST") for line, _ in benign + attacks)
    markers = ("'", '"', "<", "..", "://", "$(", "`", "|", ";", "%2", "SELECT", "SLEEP")
    assert all(any(m in value for m in markers) for _, value in attacks)
