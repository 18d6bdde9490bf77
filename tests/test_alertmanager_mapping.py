"""The pure mapping of an alert-topic document (schema v2) to an Alertmanager v2 alert.

Labels are an alert's identity in Alertmanager and index keys in its memory: they must stay
bounded (never the text, values cut, names valid) and be the same for an alert and the summary
that closes its window, so the summary updates and resolves that alert instead of opening a new one.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from exporters.alertmanager import (
    FIXED_LABELS,
    AlertmanagerSink,
    alertmanager_alert,
    format_score,
    sanitise_label_name,
)

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
PATTERN_ID = "5f0c3a9e2b7d4c1e8f6a0b9c3d2e1f00"


def alert_doc(**overrides: Any) -> dict[str, Any]:
    """A schema v2 alert document like the agent publishes (docs/alert-schema.md)."""
    doc: dict[str, Any] = {
        "schema_version": 2,
        "kind": "alert",
        "id": "11034d17-ab8f-5ea5-97e4-3bf4d8334efb",
        "source": {
            "topic": "shop-events",
            "partition": 2,
            "offset": 918273,
            "key": "checkout-7f9c",
            "key_encoding": "utf-8",
            "timestamp": "2026-11-22T17:49:27.412Z",
            "timestamp_ms": 1795369767412,
        },
        "text": "payment gateway timeout after 30000 ms for order 8f3e2c1a",
        "text_truncated": False,
        "text_length": 56,
        "score": 1.8412,
        "threshold": 1.0,
        "raw_threshold": 0.3,
        "detector": "kmeans",
        "cluster": {"id": 3, "label": "payments"},
        "distance": 0.5524,
        "model": {"id": "shop-2026-11-20", "sha256": "9b" * 32},
        "detected_at": "2026-11-22T17:49:27.915Z",
        "agent": "agent-eu-1",
        "fields": {"service": "checkout", "level": "ERROR", "http": {"status": 504}, "retry": True},
        "pattern": {
            "id": PATTERN_ID,
            "template": "payment gateway timeout after <NUM> ms for order <HEX>",
            "known": False,
            "first_seen": "2026-11-22T17:49:27.915Z",
        },
        "neighbours": [
            {"text": "payment gateway answered after <NUM> ms", "similarity": 0.9312},
            {"text": "order <HEX> paid", "similarity": 0.8},
        ],
        "group": {
            "by": "pattern",
            "cooldown_seconds": 600.0,
            "window_start": "2026-11-22T17:49:27.915Z",
            "window_end": "2026-11-22T17:59:27.915Z",
            "suppressed": 0,
            "max_score": 1.8412,
        },
    }
    doc.update(overrides)
    return doc


def summary_doc(**overrides: Any) -> dict[str, Any]:
    """The summary closing ``alert_doc``'s window: 41 events suppressed, the worst one's text."""
    doc = alert_doc(
        kind="summary",
        id="6b0d8a55-0c1e-5f4b-9a3d-2e1f0c9b8a77",
        text="payment gateway timeout after 61000 ms for order 1c2d",
        score=2.5,
        detected_at="2026-11-22T17:59:28.004Z",
    )
    doc["source"] = dict(doc["source"], offset=918999)
    doc["group"] = dict(doc["group"], suppressed=41, max_score=2.5)
    doc.update(overrides)
    return doc


def to_am(doc: dict[str, Any], *, label_fields: tuple[str, ...] = (), **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"alertname": "TextAnomaly", "cooldown_seconds": 600.0, "generator_url": None}
    options.update(kwargs)
    return alertmanager_alert(doc, label_fields=label_fields, **options)


def test_alert_maps_to_labels_annotations_and_cooldown_window() -> None:
    result = to_am(alert_doc(), label_fields=("service", "level"), generator_url="https://grafana/d/x")
    assert result == {
        "labels": {
            "alertname": "TextAnomaly",
            "pattern_id": PATTERN_ID,
            "cluster": "payments",
            "detector": "kmeans",
            "model_id": "shop-2026-11-20",
            "service": "checkout",
            "level": "ERROR",
        },
        "annotations": {
            "summary": "payment gateway timeout after 30000 ms for order 8f3e2c1a",
            "template": "payment gateway timeout after <NUM> ms for order <HEX>",
            "score": "1.84",
            "neighbours": "0.93  payment gateway answered after <NUM> ms\n0.80  order <HEX> paid",
            "alert_id": "11034d17-ab8f-5ea5-97e4-3bf4d8334efb",
            "source": "shop-events/2/918273",
        },
        "startsAt": "2026-11-22T17:49:27.915Z",
        "endsAt": "2026-11-22T17:59:27.915Z",
        "generatorURL": "https://grafana/d/x",
    }


def test_labels_never_carry_the_text_and_are_all_bounded_strings() -> None:
    long = "x" * 10_000
    doc = alert_doc(text=long, fields={"service": long, "big": 10**200})
    labels = to_am(doc, label_fields=("service", "big"))["labels"]
    assert long not in labels.values()
    assert all(LABEL_NAME.match(name) for name in labels)
    assert all(isinstance(value, str) and 0 < len(value) <= 128 for value in labels.values())
    assert labels["service"] == "x" * 127 + "…"
    assert len(labels["big"]) == 128


def test_label_field_values_str_int_bool_only_and_dotted_paths() -> None:
    doc = alert_doc(
        fields={
            "count": 7,
            "retry": True,
            "ok": False,
            "ratio": 0.5,
            "tags": ["a"],
            "meta": {"a": 1},
            "none": None,
            "empty": "",
            "http": {"status": 504},
        }
    )
    fields = ("count", "retry", "ok", "ratio", "tags", "meta", "none", "empty", "http.status", "absent")
    labels = to_am(doc, label_fields=fields)["labels"]
    extra = {k: v for k, v in labels.items() if k not in FIXED_LABELS}
    assert extra == {"count": "7", "retry": "true", "ok": "false", "http_status": "504"}


def test_label_names_are_sanitised_and_collisions_skipped() -> None:
    doc = alert_doc(
        fields={
            "k8s.pod-name": "web-1",
            "k8s_pod_name": "shadowed",
            "1st": "first",
            "detector": "evil",
            "alertname": "Overwritten",
            "cluster": "eu",
            "ünïcode": "u",
        }
    )
    fields = ("k8s.pod-name", "k8s_pod_name", "1st", "detector", "alertname", "cluster", "ünïcode", "")
    labels = to_am(doc, label_fields=fields)["labels"]
    assert labels["k8s_pod_name"] == "web-1"  # the first field of that sanitised name wins
    assert labels["_1st"] == "first"
    assert labels["_n_code"] == "u"
    assert labels["detector"] == "kmeans"
    assert labels["alertname"] == "TextAnomaly"
    assert labels["cluster"] == "payments"
    assert all(LABEL_NAME.match(name) for name in labels)


def test_fixed_label_names_are_skipped_even_when_the_fixed_label_is_missing() -> None:
    doc = alert_doc(cluster={"id": None, "label": None}, fields={"cluster": "eu"})
    labels = to_am(doc, label_fields=("cluster",))["labels"]
    assert "cluster" not in labels


@pytest.mark.parametrize(
    ("name", "expected"),
    [("service", "service"), ("a.b-c d", "a_b_c_d"), ("9lives", "_9lives"), ("_x", "_x"), ("", "")],
)
def test_sanitise_label_name(name: str, expected: str) -> None:
    assert sanitise_label_name(name) == expected


def test_cluster_label_falls_back_to_the_id_then_is_omitted() -> None:
    assert to_am(alert_doc(cluster={"id": 3, "label": None}))["labels"]["cluster"] == "3"
    assert to_am(alert_doc(cluster={"id": 0, "label": ""}))["labels"]["cluster"] == "0"
    assert "cluster" not in to_am(alert_doc(cluster={"id": None, "label": None}))["labels"]
    assert "cluster" not in to_am(alert_doc(cluster=None))["labels"]


def test_missing_fields_are_omitted_not_errors() -> None:
    """A v1 document (no pattern, kind, neighbours, group) and a nearly empty one still map."""
    v1 = alert_doc(schema_version=1)
    for key in ("kind", "pattern", "neighbours", "group"):
        del v1[key]
    result = to_am(v1)
    assert "pattern_id" not in result["labels"]
    assert "template" not in result["annotations"]
    assert result["annotations"]["neighbours"] == ""
    assert result["startsAt"] == "2026-11-22T17:49:27.915Z"
    assert result["endsAt"] == "2026-11-22T17:59:27.915Z"

    bare = to_am({})
    assert bare == {"labels": {"alertname": "TextAnomaly"}, "annotations": {"neighbours": ""}}


def test_unparsable_detected_at_leaves_timing_to_alertmanager() -> None:
    result = to_am(alert_doc(detected_at="yesterday"))
    assert "startsAt" not in result
    assert "endsAt" not in result


def test_summary_spans_the_window_and_carries_the_final_count() -> None:
    alert, summary = to_am(alert_doc()), to_am(summary_doc())
    assert summary["labels"] == alert["labels"]  # one alert to Alertmanager
    assert summary["startsAt"] == "2026-11-22T17:49:27.915Z"  # group.window_start
    assert summary["endsAt"] == "2026-11-22T17:59:28.004Z"  # its detected_at: resolves the alert
    assert summary["annotations"]["suppressed"] == "41"
    assert summary["annotations"]["window"] == "2026-11-22T17:49:27.915Z .. 2026-11-22T17:59:27.915Z"
    assert summary["annotations"]["summary"] == "payment gateway timeout after 61000 ms for order 1c2d"
    assert summary["annotations"]["score"] == "2.50"
    assert summary["annotations"]["source"] == "shop-events/2/918999"
    assert "suppressed" not in alert["annotations"]
    assert "window" not in alert["annotations"]


def test_summary_never_ends_before_it_starts() -> None:
    doc = summary_doc(detected_at="2026-11-22T17:40:00.000Z")  # clock skew: before window_start
    result = to_am(doc)
    assert result["startsAt"] == result["endsAt"] == "2026-11-22T17:49:27.915Z"


def test_summary_without_window_start_starts_at_detected_at() -> None:
    doc = summary_doc()
    del doc["group"]["window_start"]
    result = to_am(doc)
    assert result["startsAt"] == result["endsAt"] == "2026-11-22T17:59:28.004Z"
    assert "window" not in result["annotations"]


def test_timestamps_with_offsets_are_normalised_to_utc() -> None:
    result = to_am(alert_doc(detected_at="2026-11-22T18:49:27.9+01:00"), cooldown_seconds=0.5)
    assert result["startsAt"] == "2026-11-22T17:49:27.900Z"
    assert result["endsAt"] == "2026-11-22T17:49:28.400Z"


def test_zero_cooldown_ends_when_it_starts_and_bad_cooldowns_are_refused() -> None:
    result = to_am(alert_doc(), cooldown_seconds=0)
    assert result["startsAt"] == result["endsAt"]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cooldown_seconds"):
            to_am(alert_doc(), cooldown_seconds=bad)


def test_neighbours_one_line_each_flattened_and_cut() -> None:
    doc = alert_doc(
        neighbours=[
            {"text": "multi\nline\t text", "similarity": 0.999},
            {"text": "y" * 1000, "similarity": 0.5},
            {"text": "no similarity"},
            "garbage",
        ]
    )
    lines = to_am(doc)["annotations"]["neighbours"].split("\n")
    assert lines[0] == "1.00  multi line text"
    assert lines[1] == "0.50  " + "y" * 255 + "…"
    assert len(lines) == 2
    assert to_am(alert_doc(neighbours=[]))["annotations"]["neighbours"] == ""
    assert to_am(alert_doc(neighbours=None))["annotations"]["neighbours"] == ""


def test_long_texts_are_cut_to_512_characters() -> None:
    text = "é" * 5000
    doc = alert_doc(text=text, pattern=dict(alert_doc()["pattern"], template="t" * 600))
    annotations = to_am(doc)["annotations"]
    assert annotations["summary"] == "é" * 511 + "…"
    assert len(annotations["template"]) == 512
    short = to_am(alert_doc(text="é" * 512))["annotations"]["summary"]
    assert short == "é" * 512


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (1.4212, "1.42"),
        (1.0, "1.00"),
        (0.999, "1.00"),
        (123456.789, "123456.79"),
        (1.7976931348623157e308, "1.8e+308"),
    ],
)
def test_score_format(score: float, expected: str) -> None:
    assert format_score(score) == expected


def test_mapping_is_pure() -> None:
    doc = alert_doc()
    before = copy.deepcopy(doc)
    first = to_am(doc, label_fields=("service",))
    assert doc == before
    assert to_am(doc, label_fields=("service",)) == first


def test_alertname_and_generator_url_are_the_callers() -> None:
    result = to_am(alert_doc(), alertname="LogAnomaly", generator_url=None)
    assert result["labels"]["alertname"] == "LogAnomaly"
    assert "generatorURL" not in result


def test_sink_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="url"):
        AlertmanagerSink("ftp://am:9093", label_fields=(), cooldown_seconds=600)
    with pytest.raises(ValueError, match="url"):
        AlertmanagerSink("not a url", label_fields=(), cooldown_seconds=600)
    with pytest.raises(ValueError, match="credentials"):
        AlertmanagerSink("http://u:secret@am:9093", label_fields=(), cooldown_seconds=600)
    with pytest.raises(ValueError, match="queue_size"):
        AlertmanagerSink("http://am:9093", label_fields=(), cooldown_seconds=600, queue_size=0)
    with pytest.raises(ValueError, match="cooldown"):
        AlertmanagerSink("http://am:9093", label_fields=(), cooldown_seconds=-1)
    with pytest.raises(ValueError, match="generator_url"):
        AlertmanagerSink("http://am:9093", label_fields=(), cooldown_seconds=600, generator_url="/graph")
    sink = AlertmanagerSink("http://am:9093/prefix/", label_fields=(), cooldown_seconds=600)
    assert sink.endpoint == "http://am:9093/prefix/api/v2/alerts"


def test_rate_alerts_get_an_alertname_per_kind_and_say_what_was_counted() -> None:
    """A spike, a silence and a summary of spikes each map to their kind's alertname (a spike and
    its summary: the same alert in Alertmanager), with the counts as an annotation."""
    rate = {
        "kind": "spike", "observed": 412, "expected": 18.5, "bucket_seconds": 60.0,
        "bucket_start": "2026-11-22T17:49:00.000Z", "buckets": 1, "threshold": 61, "score": 3.2,
        "baseline_since": "2026-11-21T00:00:00.000Z", "key_fields": {},
    }  # fmt: skip
    spike = alert_doc(kind="spike", detector="rates", rate=rate)
    summary = alert_doc(kind="summary", detector="rates", rate=rate)
    silence = alert_doc(
        kind="silence", detector="rates", rate={**rate, "kind": "silence", "observed": 0, "buckets": 7}
    )
    mapped = {
        name: alertmanager_alert(
            doc, label_fields=(), alertname="TextAnomaly", cooldown_seconds=600, generator_url=None
        )
        for name, doc in (
            ("spike", spike),
            ("summary", summary),
            ("silence", silence),
            ("alert", alert_doc()),
        )
    }
    assert {name: m["labels"]["alertname"] for name, m in mapped.items()} == {
        "spike": "TextPatternSpike", "summary": "TextPatternSpike",
        "silence": "TextPatternSilence", "alert": "TextAnomaly",
    }  # fmt: skip
    assert mapped["spike"]["labels"] == {**mapped["summary"]["labels"]}
    assert mapped["spike"]["annotations"]["rate"] == "412 events in a 60 s bucket, 18.5 expected"
    assert mapped["silence"]["annotations"]["rate"] == "no event in 7 x 60 s, 18.5 expected"
    assert "rate" not in mapped["alert"]["annotations"]
    renamed = alertmanager_alert(
        silence, label_fields=(), alertname="X", cooldown_seconds=600, generator_url=None,
        alertnames={"silence": "HeartbeatMissing"},
    )  # fmt: skip
    assert renamed["labels"]["alertname"] == "HeartbeatMissing"


def test_a_session_alert_and_its_summary_map_to_the_session_alertname() -> None:
    session = {"key": "req-7", "events": 3, "reason": "gap", "signature": "ab" * 8}
    for kind in ("session", "summary"):
        mapped = alertmanager_alert(
            alert_doc(kind=kind, detector="sessions", session=session),
            label_fields=(), alertname="TextAnomaly", cooldown_seconds=600, generator_url=None,
        )  # fmt: skip
        assert mapped["labels"]["alertname"] == "TextSessionAnomaly"


def test_a_value_alert_says_which_value_and_what_normal_looks_like() -> None:
    value = {
        "slot": 1, "placeholder": "<NUM>", "value": "30000",
        "expected": {"feature": "magnitude", "observed": 30000.0, "range": [5.0, 199.0], "seen": 1049},
    }  # fmt: skip
    mapped = alertmanager_alert(
        alert_doc(value=value),
        label_fields=(),
        alertname="TextAnomaly",
        cooldown_seconds=600,
        generator_url=None,
    )
    assert (
        mapped["annotations"]["value"]
        == "slot 1 <NUM> = 30000: magnitude 30000.0 outside 5.0..199.0 (1049 seen)"
    )
    assert mapped["labels"]["alertname"] == "TextAnomaly", "a value anomaly is an anomalous event"
