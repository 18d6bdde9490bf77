"""The alert record published to the alert topic: key, JSON value and CloudEvents headers.

The value's schema (``schema_version`` 3) is documented in docs/alert-schema.md and pinned by
docs/alert.schema.json; subscribers code against both, so fields are only ever added. The record is
a CloudEvents 1.0 event in the Kafka protocol binding's *binary* mode: the CloudEvents attributes
travel as ``ce_*`` headers and the value is the plain JSON alert, readable by consumers that know
nothing about CloudEvents.

Two identifiers with different jobs:

* ``id`` is derived from the source record's (topic, partition, offset) alone, so a record
  redelivered after a crash or rebalance yields an alert with the *same* id; subscribers dedupe
  on it (at-least-once delivery can publish an alert twice, exactly-once cannot).
* the Kafka key is a fingerprint of (model id, nearest cluster, masked text template), so
  *similar* alerts — the same kind of line, near the same cluster, scored by the same model — go
  to one partition, in order, and a subscriber can group or rate-limit per key. Do not enable
  log compaction on the alert topic: it would keep only the latest alert per kind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exporters.dead_letters import headers_size

SCHEMA_VERSION = 3
# The type names change only with a breaking schema change; schemas 2 and 3 only added fields.
CLOUDEVENTS_TYPE = "io.kafka-anomaly-agent.alert.v1"
SUMMARY_CLOUDEVENTS_TYPE = "io.kafka-anomaly-agent.alert-summary.v1"
# A spike or a silence of a pattern's rate (schema 3): the event is not anomalous, its rate is.
RATE_CLOUDEVENTS_TYPE = "io.kafka-anomaly-agent.rate-alert.v1"
# A session whose steps went wrong (schema 3): no line of it need be anomalous.
SESSION_CLOUDEVENTS_TYPE = "io.kafka-anomaly-agent.session-alert.v1"
CONTENT_TYPE = "application/json"
# Fixed forever: changing it would change every alert id and break subscribers' dedupe.
# Derived, not random, so other implementations can recompute ids from the documented recipe.
ALERT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:kafka-anomaly-agent:alert")
# 128 bits of sha256, hex: collision-free for grouping purposes and short in tooling output.
KEY_HEX_CHARS = 32


@dataclass(frozen=True)
class AlertSource:
    """Where the anomalous event came from: the input record's coordinates, key and timestamp."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None


@dataclass(frozen=True)
class PatternInfo:
    """The alert's ``pattern``: what fired, whether training saw it, since when it alerts here."""

    id: str
    template: str
    known: bool | None
    first_seen: datetime


@dataclass(frozen=True)
class GroupInfo:
    """The alert's ``group`` (``alerts.group_by = "pattern"``): the cooldown window it opened
    (an alert) or closed (a summary) and how many anomalous events it did not publish."""

    cooldown_seconds: float
    window_start: datetime
    window_end: datetime
    suppressed: int
    max_score: float
    # A summary's first and last suppressed event: (offset, Kafka timestamp in ms or None).
    first: tuple[int, int | None] | None = None
    last: tuple[int, int | None] | None = None


@dataclass(frozen=True)
class RateInfo:
    """The alert's ``rate`` (schema 3): a pattern's count in event-time buckets against its
    baseline. ``kind`` is "spike" or "silence"; a spike counts ``observed`` events in one bucket
    where ``expected`` were expected, a silence ``observed`` = 0 in ``buckets`` empty buckets
    where ``expected`` were expected; ``threshold`` is the count (spike) or number of empty
    buckets (silence) that alerts; ``score`` how far beyond the rule's probability the
    observation is (>= 1); ``baseline_since`` where the key's baseline starts; ``key_fields`` the
    values of ``[rates] key_fields`` that split the pattern's rate."""

    kind: str
    observed: int
    expected: float
    bucket_seconds: float
    bucket_start: datetime
    buckets: int
    threshold: int
    score: float
    baseline_since: datetime
    key_fields: Mapping[str, str]


@dataclass(frozen=True)
class AlertRecord:
    """A ready-to-produce alert: ``producer.produce(topic, key=r.key, value=r.value, headers=r.headers)``.

    ``document`` is the value as a JSON object, for sinks beside Kafka (Alertmanager)."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    id: str
    document: dict[str, Any]


def alert_id(topic: str, partition: int, offset: int) -> str:
    """The alert id of the record at (topic, partition, offset): a UUIDv5, stable across redelivery."""
    return str(uuid.uuid5(ALERT_ID_NAMESPACE, f"{topic}/{partition}/{offset}"))


def rate_alert_id(kind: str, basis: str) -> str:
    """The id of a spike or silence: UUIDv5 of ``"<kind>/<basis>"`` where ``basis`` is canonical
    JSON of the key and the bucket (``RateDecision.basis``): a silence has no record of its own,
    and the same decision always gives the same id, whoever publishes it."""
    return str(uuid.uuid5(ALERT_ID_NAMESPACE, f"{kind}/{basis}"))


def session_alert_id(topic: str, partition: int, session: str, first_offset: int) -> str:
    """The id of a session alert: UUIDv5 of ``"session/<topic>/<partition>/<key>/<first offset>"``
    (a session is its key and where it began; the same session always gives the same id)."""
    return str(uuid.uuid5(ALERT_ID_NAMESPACE, f"session/{topic}/{partition}/{session}/{first_offset}"))


def summary_id(topic: str, partition: int, pattern: str, window_start_ms: int) -> str:
    """The id of the summary closing the window of ``pattern`` opened at ``window_start_ms`` on
    (topic, partition): the same window always gives the same id, whoever publishes it."""
    return str(uuid.uuid5(ALERT_ID_NAMESPACE, f"summary/{topic}/{partition}/{pattern}/{window_start_ms}"))


def pattern_id(model_id: str, template: str) -> str:
    """The pattern's stable id: 128 bits of sha256(model id, NUL, prepared text), hex.

    Stable across restarts and instances for one model; a new model gives new ids (its
    preparation and its notion of normal may differ). Feedback verdicts name patterns by it.
    """
    digest = hashlib.sha256(f"{model_id}\0{template}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:KEY_HEX_CHARS]


def alert_key(model_id: str, cluster_id: int | None, template: str) -> bytes:
    """Fingerprint of "similar" alerts: same model, same nearest cluster, same masked text.

    ``template`` is the text after ``TextPreparation.prepare`` (variable tokens such as numbers,
    ids and addresses masked), so "disk /dev/sda1 97% full" and "disk /dev/sdb2 99% full" share a
    key when masking is on. Fields are joined with NUL, which cannot occur in a model id.
    """
    cluster = "" if cluster_id is None or cluster_id < 0 else str(int(cluster_id))
    digest = hashlib.sha256("\0".join((model_id, cluster, template)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:KEY_HEX_CHARS].encode("ascii")


def build_alert(
    *,
    source: AlertSource,
    text: str,
    score: float,
    threshold: float,
    detector: str,
    cluster_id: int | None,
    cluster_label: str | None,
    distance: float | None,
    model_id: str,
    model_sha256: str,
    instance_id: str,
    text_max_chars: int,
    source_uri: str,
    fields: Mapping[str, Any] | None,
    detected_at: datetime | None = None,
    prepared_text: str | None = None,
    raw_threshold: float | None = None,
    max_bytes: int | None = None,
    pattern: PatternInfo | None = None,
    neighbours: Sequence[tuple[str, float]] = (),
    group: GroupInfo | None = None,
    summary: bool = False,
    text_length: int | None = None,
    fields_truncated: bool = False,
    rate: RateInfo | None = None,
    rate_basis: str | None = None,
    group_name: str | None = None,
    session: Mapping[str, Any] | None = None,
    value: Mapping[str, Any] | None = None,
) -> AlertRecord:
    """Build the alert for one anomalous event.

    ``text`` is the event's raw text (truncated to ``text_max_chars`` characters, with
    ``text_truncated`` and ``text_length`` telling subscribers so); ``prepared_text`` is the
    masked template used for the key (default: ``text``). ``score`` and ``threshold`` are on the
    normalized scale (threshold 1.0); ``distance`` and ``raw_threshold`` are the detector's raw
    measure and calibrated threshold where known. A negative ``cluster_id`` (the detector has no
    cluster) is published as null. ``detected_at`` must be timezone-aware (default: now, UTC).
    ``fields`` are the event's other JSON fields, carried verbatim (non-finite floats, which JSON
    cannot hold, become the strings "NaN" / "Infinity" / "-Infinity").

    ``max_bytes`` bounds the whole record (key, value, headers): a record over it could never be
    produced and would stall its partition. An alert over it is published without its ``fields``
    (``"fields": {}``, ``"fields_truncated": true``), and, if still too large, with its text cut
    further (``text_truncated`` true, ``text_length`` the original length), then with the source
    key cut to 64 characters (``source.key_truncated`` true).

    ``pattern`` (default: the id of ``prepared_text``, ``known`` null, first seen now),
    ``neighbours`` ((text, similarity), nearest first) and ``group`` are schema 2's additions;
    ``summary=True`` builds the summary that closes a ``group`` window: its id is
    ``summary_id`` and its source, text and score are the window's highest-scoring suppressed
    event's. ``text_length`` is the full text's length when ``text`` was cut before (a summary's
    stored event); ``fields_truncated`` marks ``fields`` as cut before (a summary's event whose
    fields were too large to keep in the grouping state).

    ``rate`` (schema 3) makes it a rate alert: ``kind`` is ``rate.kind`` ("spike" or "silence";
    a summary of spikes stays "summary" with its ``rate``), the source is the example event, the
    id is ``rate_alert_id(rate.kind, rate_basis)``. ``group_name`` is what a summary's id names
    instead of the pattern id (a window of spikes is not the pattern's window of anomalies).
    ``session`` (schema 3) makes it a session alert (kind "session"; a summary of a window of
    them stays "summary"): the JSON object of the session (its key, events, first and last event,
    unexpected steps, pattern runs, signature); its id is ``session_alert_id``. ``value``
    (schema 3): for an anomalous event whose value made the difference, which slot of its
    pattern, the value, and what normal values of that slot look like.

    Raises ValueError for a NaN score or a naive ``detected_at``: both are caller bugs.
    """
    if math.isnan(score):
        raise ValueError("score is NaN; the detector produced no usable score")
    if detected_at is None:
        detected_at = datetime.now(UTC)
    elif detected_at.tzinfo is None:
        raise ValueError("detected_at must be timezone-aware")
    template = text if prepared_text is None else prepared_text
    if pattern is None:
        pattern = PatternInfo(pattern_id(model_id, template), template, None, detected_at)
    if summary:
        if group is None:
            raise ValueError("a summary closes a group window: give group")
        name = pattern.id if group_name is None else group_name
        aid = summary_id(source.topic, source.partition, name, _ms(group.window_start))
        kind = "summary"
    elif rate is not None:
        if rate_basis is None:
            raise ValueError("a rate alert's id needs rate_basis")
        aid, kind = rate_alert_id(rate.kind, rate_basis), rate.kind
    elif session is not None:
        first = int(session["first"]["offset"])
        aid, kind = session_alert_id(source.topic, source.partition, str(session["key"]), first), "session"
    else:
        aid, kind = alert_id(source.topic, source.partition, source.offset), "alert"
    key = alert_key(model_id, cluster_id, template)
    length = len(text) if text_length is None else max(text_length, len(text))
    truncated = length > text_max_chars
    has_cluster = cluster_id is not None and cluster_id >= 0

    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": aid,
        "source": _source_json(source),
        "text": text[:text_max_chars],
        "text_truncated": truncated,
        "text_length": length,
        "score": _finite(score),
        "threshold": _finite(threshold),
        "raw_threshold": None if raw_threshold is None else _finite(raw_threshold),
        "detector": detector,
        "cluster": {
            "id": int(cluster_id) if cluster_id is not None and has_cluster else None,
            "label": cluster_label if has_cluster else None,
        },
        "distance": None if distance is None else _finite(distance),
        "model": {"id": model_id, "sha256": model_sha256},
        "detected_at": _iso(detected_at),
        "agent": instance_id,
        "fields": json_safe(dict(fields or {})),
        "kind": kind,
        "pattern": {
            "id": pattern.id,
            "template": pattern.template[:text_max_chars],
            "known": pattern.known,
            "first_seen": _iso(pattern.first_seen),
        },
        "neighbours": [
            {"text": t[:text_max_chars], "similarity": _finite(similarity)} for t, similarity in neighbours
        ],
        "group": None
        if group is None
        else {
            "by": "pattern",
            "cooldown_seconds": float(group.cooldown_seconds),
            "window_start": _iso(group.window_start),
            "window_end": _iso(group.window_end),
            "suppressed": int(group.suppressed),
            "max_score": _finite(group.max_score),
            "first": _position(group.first),
            "last": _position(group.last),
        },
        "rate": None if rate is None else _rate_json(rate),
        "session": None if session is None else json_safe(dict(session)),
        "value": None if value is None else json_safe(dict(value)),
    }
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", aid.encode()),
        ("ce_source", source_uri.encode("utf-8")),
        ("ce_type", _ce_type(kind).encode()),
        ("ce_time", document["detected_at"].encode()),
        ("ce_subject", f"{source.topic}/{source.partition}/{source.offset}".encode()),
        ("ce_partitionkey", key),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    if fields_truncated:
        document["fields_truncated"] = True
    encoded = _dumps(document)
    if max_bytes is not None:
        encoded = _fit(document, encoded, max_bytes - len(key) - headers_size(headers))
    return AlertRecord(key=key, value=encoded, headers=headers, id=aid, document=document)


def _fit(document: dict[str, Any], value: bytes, budget: int) -> bytes:
    """``value`` cut down to ``budget`` bytes: fields dropped first, then the neighbours, then the
    text and the template shortened."""
    if len(value) <= budget:
        return value
    document["fields"] = {}
    document["fields_truncated"] = True
    value = _dumps(document)
    if len(value) > budget and document["neighbours"]:
        document["neighbours"] = []
        value = _dumps(document)
    pattern = document["pattern"]
    while len(value) > budget and len(pattern["template"]) > 64:
        pattern["template"] = pattern["template"][: len(pattern["template"]) // 2]
        value = _dumps(document)
    text: str = document["text"]
    while len(value) > budget and text:
        text = text[: len(text) // 2]
        document["text"], document["text_truncated"] = text, True
        value = _dumps(document)
    source = document["source"]
    if len(value) > budget and source["key"] is not None:
        source["key"], source["key_truncated"] = source["key"][:64], True
        value = _dumps(document)
    return value


def _ce_type(kind: str) -> str:
    if kind == "summary":
        return SUMMARY_CLOUDEVENTS_TYPE
    if kind == "session":
        return SESSION_CLOUDEVENTS_TYPE
    return RATE_CLOUDEVENTS_TYPE if kind in ("spike", "silence") else CLOUDEVENTS_TYPE


def _rate_json(rate: RateInfo) -> dict[str, Any]:
    return {
        "kind": rate.kind,
        "observed": int(rate.observed),
        "expected": _finite(rate.expected),
        "bucket_seconds": float(rate.bucket_seconds),
        "bucket_start": _iso(rate.bucket_start),
        "buckets": int(rate.buckets),
        "threshold": int(rate.threshold),
        "score": _finite(rate.score),
        "baseline_since": _iso(rate.baseline_since),
        "key_fields": {str(k): str(v) for k, v in rate.key_fields.items()},
    }


def _source_json(source: AlertSource) -> dict[str, Any]:
    key: str | None
    if source.key is None:
        key, encoding = None, None
    else:
        try:
            key, encoding = source.key.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            key, encoding = base64.b64encode(source.key).decode("ascii"), "base64"
    timestamp = None
    if source.timestamp_ms is not None and source.timestamp_ms >= 0:
        timestamp = _iso(datetime.fromtimestamp(source.timestamp_ms / 1000, UTC))
    return {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "key": key,
        "key_encoding": encoding,
        "timestamp": timestamp,
        "timestamp_ms": source.timestamp_ms if timestamp is not None else None,
    }


def _position(where: tuple[int, int | None] | None) -> dict[str, Any] | None:
    """A suppressed event's place: ``{"offset", "timestamp"}`` (RFC 3339, null when unknown)."""
    if where is None:
        return None
    offset, timestamp_ms = where
    stamp = (
        None
        if timestamp_ms is None or timestamp_ms < 0
        else _iso(datetime.fromtimestamp(timestamp_ms / 1000, UTC))
    )
    return {"offset": offset, "timestamp": stamp}


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _iso(moment: datetime) -> str:
    """RFC 3339 / ISO 8601 UTC with milliseconds: ``2026-11-22T17:49:27.123Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _finite(number: float) -> float:
    """JSON has no infinity; an infinite score (zero threshold) is published as the largest float."""
    number = float(number)
    if math.isinf(number):
        return math.copysign(1.7976931348623157e308, number)
    return number


def json_safe(value: Any) -> Any:
    """``value`` with NaN/±Infinity replaced by strings and keys made strings: what JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _dumps(document: dict[str, Any]) -> bytes:
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A carried field held an unpaired surrogate escape ("\ud800"): not encodable as UTF-8,
        # but ASCII-escaped JSON carries it losslessly.
        return json.dumps(document, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()
