"""``train --time-field``: each training template's rate baseline, stored in the bundle.

The agent learns a pattern's rate online and may only alert once a key has seen
``[rates] warmup_seconds`` (a day) of it. When the training data carries event times, the same
rule (``agent.alerts.rates.RateTracker.learn``) learns every template's baseline from them, and
the bundle's ``rates.json`` seeds the agent's keys: a known pattern's spike or silence alerts from
the first hour of a fresh deployment. The baselines are learned with ``[rates]``' default bucket
and half-lives; an agent configured otherwise does not use them (it says so at start-up).

Event times: a number (seconds since the epoch, or milliseconds when it is larger than 10^11) or
an ISO 8601 / RFC 3339 string (a string without a zone is UTC). A normal record without a
parsable time is an error naming its line: half-timed data would teach wrong rates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.alerts.partition_rates import seed_document, template_id, tracker
from agent.config import RateSettings
from agent.decode import lookup_field
from training.records import InputError, Record

__all__ = ["event_time_ms", "rate_seeds"]

# Epoch numbers above this are milliseconds (10^11 s is the year 5138).
_MILLISECONDS_FROM = 10**11


def event_time_ms(value: Any) -> int | None:
    """``value`` as milliseconds since the epoch, None when it is not a time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            return None
        return int(value) if value >= _MILLISECONDS_FROM else int(value * 1000)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return event_time_ms(float(text))
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return round(moment.timestamp() * 1000)
    return None


def rate_seeds(
    records: Sequence[Record], texts: Sequence[str], indices: Sequence[int], time_field: str, path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``rates.json`` of the bundle, a summary for the manifest) from the records at
    ``indices`` (the normal ones) with their prepared ``texts``. Raises InputError naming the
    first record without a usable time."""
    settings = RateSettings()
    times: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        record = records[i]
        found, value = lookup_field(record.data, time_field)
        at = event_time_ms(value) if found else None
        if at is None:
            raise InputError(
                f"{path}:{record.line}: --time-field {time_field}: {value!r} is not a time "
                "(epoch seconds or milliseconds, or ISO 8601)"
            )
        times[template_id(texts[i])].append(at)
    if not times:
        raise InputError(f"{path}: no normal record to learn rates from")
    end = max(max(stamps) for stamps in times.values())
    learner = tracker(settings)
    baselines = {}
    for tid, stamps in times.items():
        baseline = learner.learn(sorted(stamps), until_ms=end)
        if baseline is not None:
            baselines[tid] = baseline
    start = min(min(stamps) for stamps in times.values())
    summary = {
        "time_field": time_field,
        "templates": len(baselines),
        "first_event": _iso(start),
        "last_event": _iso(end),
        "hours": round((end - start) / 3_600_000, 2),
        "covers_warmup": end - start >= settings.warmup_seconds * 1000,
    }
    return seed_document(settings, baselines), summary


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
