"""The documented grouping rule written plainly (no heaps, no undo): what the agent must publish.

Per (partition, pattern) the first anomalous event alerts and opens the window [t, t + cooldown)
of event time (the records' Kafka timestamps); anomalous events of the pattern inside it are
counted; a window ends when its partition's event time (the latest timestamp of any of its
records) reaches its end — or when the pattern's next event falls after it — with a summary of
the count, the first and the last counted event, if it counted any.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# (partition, timestamp ms, pattern template or None for a normal record, offset)
Record = tuple[int, int, str | None, int]
# ("alert", partition, window start, template, offset, None, None) or
# ("summary", partition, window start, template, count, first offset, last offset)
Published = tuple[str, int, int, str, int, int | None, int | None]


@dataclass
class _Window:
    start: int
    counted: int = 0
    first: int | None = None
    last: int | None = None


def expected(records: Iterable[Record], cooldown_ms: int, *, end_of_time: bool = True) -> list[Published]:
    """What ``records`` (in offset order per partition) publish; with ``end_of_time`` every
    window still open at the end is closed too (the stream ended long ago)."""
    windows: dict[tuple[int, str], _Window] = {}
    event_time: dict[int, int] = {}
    out: list[Published] = []

    def close(partition: int, until: int) -> None:
        ended = [k for k, w in windows.items() if k[0] == partition and w.start + cooldown_ms <= until]
        for key in ended:
            w = windows.pop(key)
            if w.counted:
                out.append(("summary", partition, w.start, key[1], w.counted, w.first, w.last))

    rows = list(records)
    if end_of_time:
        rows += [(p, 2**62, None, -1) for p in sorted({r[0] for r in rows})]
    for partition, ts, template, offset in rows:
        if ts > event_time.get(partition, -1):
            event_time[partition] = ts
            close(partition, ts)
        if template is None:
            continue
        window = windows.get((partition, template))
        if window is None:
            windows[(partition, template)] = _Window(ts)
            out.append(("alert", partition, ts, template, offset, None, None))
        else:
            window.counted += 1
            window.first = offset if window.first is None else window.first
            window.last = offset
    return sorted(out, key=str)


def published(documents: Iterable[dict[str, Any]]) -> list[Published]:
    """The same tuples read off alert-topic documents."""
    out: list[Published] = []
    for d in documents:
        start = round(
            datetime.fromisoformat(d["group"]["window_start"].replace("Z", "+00:00")).timestamp() * 1000
        )
        partition, template = d["source"]["partition"], d["pattern"]["template"]
        if d["kind"] == "alert":
            out.append(("alert", partition, start, template, d["source"]["offset"], None, None))
        else:
            g = d["group"]
            out.append(
                (
                    "summary",
                    partition,
                    start,
                    template,
                    g["suppressed"],
                    g["first"]["offset"],
                    g["last"]["offset"],
                )
            )
    return sorted(out, key=str)
