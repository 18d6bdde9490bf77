"""Pattern rates per input partition: the ``RateTracker`` of each partition, the keys its events
count under, the example each key keeps, the seeds from the bundle, and their changelog records.

``agent.alerts.rates`` is the pure rule; this module gives it the agent's events. ``Alerting``
calls ``observe`` for every scored record in offset order with the partition's event time, and
``advance`` with the wall clock for a quiet partition; it publishes the decisions (spikes go
through grouping like any anomaly, one per key and cooldown; silences are one per episode) and
writes ``changes`` into the batch's transaction.

**Keys.** (input topic, input partition, template id, ``[rates] key_fields`` values). The
template id is 128 bits of sha256 of the prepared text: independent of the model, so a reloaded
bundle that prepares text alike keeps every baseline (one that prepares it differently starts
again: ``reset``, with tombstones in the next batch, so the old templates do not all report
silences). A field that is missing is the empty string; values are cut to 128 characters.

**Example.** Each key keeps the first event of its latest bucket (text and template cut to 256
characters, fields up to 1 KiB), written with its state: a silence alert shows the pattern and a
recent event even when the agent restarted since. About 1.1 KiB per key with its baseline.

**Seeds.** ``train --time-field`` stores each training template's baseline in the bundle
(``rates.json``); a key that appears for the first time starts from its template's baseline, so
known patterns alert without the day of warm-up. The training stream is the whole topic, a key one
partition of it: the seed is thinned to the partition's share, 1/partitions of the input topic
(sums and the busiest bucket scaled by it, the second moment as a binomial thinning, the longest
gap stretched by its inverse), which assumes a pattern's events spread over the partitions (keys
unrelated to the pattern, or one partition). Seeds are used only when the bundle learned them with
this configuration's bucket and half-lives, and only those that cover the warm-up
(``[rates] warmup_seconds`` of training time).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.alerts.rates import (
    Baseline,
    RateDecision,
    RateKey,
    RateState,
    RateTracker,
    decode_key,
    decode_state,
    encode_key,
    encode_state,
)
from agent.config import RateSettings
from agent.decode import lookup_field
from agent.kafka.source import PartitionKey
from exporters.alerts import json_safe

__all__ = ["EXAMPLE_TEXT_MAX_CHARS", "RatePartitions", "seed_document", "template_id"]

log = logging.getLogger(__name__)

EXAMPLE_TEXT_MAX_CHARS = 256
EXAMPLE_FIELDS_MAX_BYTES = 1024
KEY_VALUE_MAX_CHARS = 128
# Template ids are cached per prepared text; the cache is dropped when it grows past this.
_TEMPLATE_CACHE_MAX = 200_000
SEEDS_VERSION = 1


def template_id(prepared: str) -> str:
    """The model-independent id of a prepared text: 128 bits of sha256, hex."""
    return hashlib.sha256(prepared.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def example(
    offset: int, key: bytes | None, timestamp_ms: int | None, text: str, prepared: str, fields: Any
) -> dict[str, Any]:
    """What a rate alert shows of one event, JSON-able and bounded (kept in the key's state)."""
    safe = json_safe(fields)
    truncated = len(json.dumps(safe, default=str)) > EXAMPLE_FIELDS_MAX_BYTES
    return {
        "offset": offset,
        "key": None if key is None else base64.b64encode(key).decode("ascii"),
        "timestamp_ms": timestamp_ms,
        "text": text[:EXAMPLE_TEXT_MAX_CHARS],
        "text_length": len(text),
        "prepared": prepared[:EXAMPLE_TEXT_MAX_CHARS],
        "fields": {} if truncated else safe,
        "fields_truncated": truncated,
    }


def seed_document(settings: RateSettings, baselines: Mapping[str, Baseline]) -> dict[str, Any]:
    """The bundle's ``rates.json``: the baselines by template id, with the knobs they depend on."""
    return {
        "version": SEEDS_VERSION,
        "bucket_ms": settings.bucket_ms(),
        "fast_half_life_ms": round(settings.fast_half_life_seconds * 1000),
        "slow_half_life_ms": round(settings.slow_half_life_seconds * 1000),
        "baselines": {
            tid: [b.since_ms, b.buckets, b.fast_sum, b.fast_squares, b.slow_sum, b.busiest, b.worst_gap]
            for tid, b in sorted(baselines.items())
        },
    }


def tracker(settings: RateSettings) -> RateTracker:
    """A tracker with ``settings``' rule."""
    return RateTracker(
        bucket_ms=settings.bucket_ms(),
        max_keys=settings.max_keys,
        fast_half_life_ms=round(settings.fast_half_life_seconds * 1000),
        slow_half_life_ms=round(settings.slow_half_life_seconds * 1000),
        warmup_ms=round(settings.warmup_seconds * 1000),
        spike_alpha=settings.spike_alpha,
        min_count=settings.min_count,
        min_ratio=settings.min_ratio,
        spike_margin=settings.spike_margin,
        silence_alpha=settings.silence_alpha,
        gap_margin=settings.gap_margin,
        steady_within_ms=round(settings.steady_within_seconds * 1000),
    )


class RatePartitions:
    """One ``RateTracker`` per assigned input partition, with transactional undo. Not
    thread-safe: the loop owns it (through ``Alerting``)."""

    def __init__(self, settings: RateSettings) -> None:
        self._settings = settings
        self._trackers: dict[PartitionKey, RateTracker] = {}
        self._touched: set[PartitionKey] = set()
        self._template_ids: dict[str, str] = {}
        self._seeds: dict[str, Baseline] = {}
        self._seed_scale: dict[str, float] = {}  # input topic -> 1 / its partitions
        self._thinned: dict[tuple[str, str], Baseline] = {}
        # A reset is applied in a batch and done once that batch committed (an abort undoes it).
        self._reset_pending = False
        self._reset_applied = False

    # ----------------------------------------------------------------- configuration

    def set_partition_counts(self, counts: Mapping[str, int]) -> None:
        """The input topics' partition counts (a seed is thinned to one partition's share)."""
        self._seed_scale = {topic: 1.0 / max(1, n) for topic, n in counts.items()}
        self._thinned.clear()

    def use_seeds(self, document: Mapping[str, Any] | None) -> int:
        """Take the bundle's ``rates.json`` (None: no seeds); returns how many baselines are used.
        Seeds learned with another bucket or half-life are not used (logged)."""
        self._seeds, self._thinned = {}, {}
        if document is None:
            return 0
        expected = seed_document(self._settings, {})
        knobs = ("version", "bucket_ms", "fast_half_life_ms", "slow_half_life_ms")
        if any(document.get(k) != expected[k] for k in knobs):
            log.warning(
                "the bundle's rate baselines were learned with %s, [rates] is %s: not used, new "
                "patterns' rates warm up for %g s",
                {k: document.get(k) for k in knobs},
                {k: expected[k] for k in knobs},
                self._settings.warmup_seconds,
            )
            return 0
        covered = self._settings.warmup_seconds * 1000 / self._settings.bucket_ms()
        for tid, row in document.get("baselines", {}).items():
            since, buckets, fast_sum, fast_squares, slow_sum, busiest, worst_gap = row
            if int(buckets) < covered:
                continue  # learned on less than the warm-up: the key warms up live instead
            self._seeds[str(tid)] = Baseline(
                int(since), int(buckets), fast_sum, fast_squares, slow_sum, busiest, worst_gap
            )
        return len(self._seeds)

    def reset(self) -> None:
        """Forget every key (a bundle that prepares text differently: its templates are new). The
        tombstones go out with the next committed batch."""
        self._reset_pending = True

    # ----------------------------------------------------------------- a batch

    def observe(
        self,
        partition: PartitionKey,
        event_time_ms: int,
        prepared: str,
        fields: Mapping[str, Any],
        make_example: Callable[[], dict[str, Any]],
    ) -> tuple[RateDecision, ...]:
        """Count one scored record of ``partition`` at its event time."""
        if self._reset_pending and not self._reset_applied:
            self._apply_reset()
        tid = self._template_ids.get(prepared)
        if tid is None:
            if len(self._template_ids) >= _TEMPLATE_CACHE_MAX:
                self._template_ids.clear()
            tid = self._template_ids[prepared] = template_id(prepared)
        values = tuple(_key_value(fields, name) for name in self._settings.key_fields)
        key: RateKey = (partition[0], partition[1], tid, values)
        rates = self._tracker(partition)
        return rates.observe(key, event_time_ms, seed=self._seed(tid, partition[0]), example=make_example)

    def advance(self, partition: PartitionKey, now_ms: int) -> tuple[RateDecision, ...]:
        """The silences due by ``now_ms`` on ``partition`` (the wall clock of a quiet partition)."""
        rates = self._trackers.get(partition)
        if rates is None or not len(rates):
            return ()
        decisions = rates.advance(now_ms)
        if decisions:
            self._touched.add(partition)
        return decisions

    def example_of(self, decision: RateDecision) -> dict[str, Any] | None:
        """The example event the key of ``decision`` keeps (a silence shows it)."""
        rates = self._trackers.get((decision.key[0], decision.key[1]))
        state = None if rates is None else rates.get(decision.key)
        return None if state is None else state.example

    def key_fields(self, key: RateKey) -> dict[str, str]:
        """``[rates] key_fields`` with their values in ``key``."""
        return dict(zip(self._settings.key_fields, key[3], strict=True))

    def changes(self) -> Iterable[tuple[int, bytes, bytes | None]]:
        """(changelog partition, key, value or None) of every state the batch changed."""
        for partition in self._touched:
            for key, state in self._trackers[partition].changes().items():
                yield key[1], encode_key(key), None if state is None else encode_state(state)

    def committed(self) -> None:
        for partition in self._touched:
            self._trackers[partition].commit()
        self._touched = set()
        if self._reset_applied:
            self._reset_pending = self._reset_applied = False

    def aborted(self) -> None:
        for partition in self._touched:
            self._trackers[partition].rollback()
        self._touched = set()
        self._reset_applied = False

    def __len__(self) -> int:
        """Keys kept, all partitions together."""
        return sum(len(t) for t in self._trackers.values())

    # ----------------------------------------------------------------- assignment

    def forget(self, partitions: Iterable[PartitionKey]) -> None:
        for partition in partitions:
            self._trackers.pop(partition, None)

    def restore(self, partitions: set[PartitionKey]) -> dict[PartitionKey, RateTracker]:
        """Fresh trackers for newly assigned ``partitions``; ``restore_record`` fills them."""
        self.forget(partitions)
        fresh = {p: tracker(self._settings) for p in partitions}
        self._trackers.update(fresh)
        return fresh

    @staticmethod
    def decode(raw_key: bytes, value: bytes | None) -> tuple[RateKey, RateState | None]:
        """A rate changelog record (ValueError when it is not one)."""
        return decode_key(raw_key), None if value is None else decode_state(value)

    # ----------------------------------------------------------------- internals

    def _tracker(self, partition: PartitionKey) -> RateTracker:
        self._touched.add(partition)
        rates = self._trackers.get(partition)
        if rates is None:
            rates = self._trackers[partition] = tracker(self._settings)
        return rates

    def _seed(self, tid: str, topic: str) -> Baseline | None:
        if not self._seeds:
            return None
        thinned = self._thinned.get((topic, tid))
        if thinned is None:
            seed = self._seeds.get(tid)
            if seed is None:
                return None
            f = self._seed_scale.get(topic, 1.0)
            thinned = self._thinned[(topic, tid)] = Baseline(
                since_ms=seed.since_ms,
                buckets=seed.buckets,
                fast_sum=seed.fast_sum * f,
                fast_squares=seed.fast_squares * f * f + seed.fast_sum * f * (1.0 - f),
                slow_sum=seed.slow_sum * f,
                busiest=seed.busiest * f,
                worst_gap=seed.worst_gap / f,
            )
        return thinned

    def _apply_reset(self) -> None:
        self._reset_applied = True
        for partition, rates in self._trackers.items():
            if len(rates):
                rates.clear()
                self._touched.add(partition)


def _key_value(fields: Mapping[str, Any], name: str) -> str:
    found, value = lookup_field(fields, name)
    if not found or value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return text[:KEY_VALUE_MAX_CHARS]
