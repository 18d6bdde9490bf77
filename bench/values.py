"""What the value view costs per event on the agent's hit path (issue 19); one JSON object.

The agent scores a log event in two halves: the **pattern** (its prepared text) through the
pattern table, embedded and scored once per distinct text, and, with a value view in the bundle,
the event's own **values** (what masking replaced) against its pattern's slots, on every event.
This measures the second half and what it adds to the first, on real log lines with their real
values:

- data: the loghub samples ``hdfs_2k``, ``bgl_2k`` and ``thunderbird_2k`` (``--datasets``); the
  first half of each file trains, the second half is replayed as events (3,000 lines; BGL's
  second half holds templates its first half never shows, so both the pattern's own slots and the
  pooled slots are exercised, and some events are anomalous);
- model: what ``anomaly-agent train`` fits by default on the training half — the default
  detector on masked text and the value view beside it (``fit_value_view``), with the cached fp32
  embedder (``training.export.cached_export``);
- per event, best of ``--repeat`` passes over all events (µs; a pass is timed as a whole):

  ``prepare_us`` / ``prepare_values_us``  ``TextPreparation.prepare`` vs ``prepare_values`` on the
                                         raw line (what the pipeline calls per event without /
                                         with a value view);
  ``lookup_us``                          ``PatternTable.get`` of the prepared text (a hit);
  ``event_score_us``                     ``agent.model.patterns.event_score`` on the hit (the
                                         per-event call; ``explain`` included where it fires);
  ``bound_score_us``                     ``BoundPattern.score`` alone, for reference;
  ``hit_path_without_us`` / ``hit_path_with_us``  prepare + lookup, vs prepare_values + lookup +
                                         event_score, timed as one loop each; ``added_us`` their
                                         difference;

- ``projected_ratio``: ``t / (t + added_us)`` for the agent's measured end-to-end cost per event
  ``t`` on the log replay (docs/agent.md: 14,479-15,620 events/s, 64-69 µs per event): what the
  value view would leave of that throughput if it added nothing else. The real figure is
  ``bench/replay.py``'s, once the agent calls ``event_score``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/values.py [--repeat 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.model.defaults import DEFAULT_DETECTOR  # noqa: E402
from agent.model.detectors import create_detector  # noqa: E402
from agent.model.detectors._common import CalibratedDetector  # noqa: E402
from agent.model.embedder import OnnxEmbedder  # noqa: E402
from agent.model.patterns import PatternScore, PatternTable, score_patterns  # noqa: E402
from agent.model.patterns import event_score as event_score_fn  # noqa: E402
from agent.model.textprep import SlotValues, TextPreparation  # noqa: E402
from agent.model.values import fit_value_view  # noqa: E402
from training.export import cached_export  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
FILES = {
    "hdfs_2k": ("HDFS_2k.log", False),
    "bgl_2k": ("BGL_2k.log", True),
    "thunderbird_2k": ("Thunderbird_2k.log", True),
}
#: the agent's end-to-end µs per event on the log replay (docs/agent.md, 14,479-15,620 events/s).
AGENT_US_PER_EVENT = (64.0, 69.0)


def lines_of(datasets: Path, name: str) -> list[str]:
    """A loghub sample's non-empty lines, without the label column where the file has one."""
    file, labelled = FILES[name]
    with (datasets / name / file).open(encoding="utf-8", errors="replace") as fh:
        lines = [line.rstrip("\n") for line in fh if line.strip()]
    return [line.split(maxsplit=1)[1] if labelled else line for line in lines]


def per_event(fn: Callable[[], object], n: int, repeat: int) -> float:
    """µs per event of ``fn`` (one pass over n events): the best of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return round(best / n * 1e6, 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    train: list[str] = []
    events: list[str] = []
    for name in args.datasets:
        lines = lines_of(args.datasets_dir, name)
        train += lines[: len(lines) // 2]
        events += lines[len(lines) // 2 :]
    prep = TextPreparation()
    train_pairs = [prep.prepare_values(t) for t in train]
    train_texts = [t for t, _ in train_pairs]
    embedder = OnnxEmbedder(args.embedder or cached_export(), intra_op_threads=args.threads)
    distinct = list(dict.fromkeys(train_texts))
    rows = {t: i for i, t in enumerate(distinct)}
    vectors = embedder.embed(distinct)[[rows[t] for t in train_texts]]
    detector = create_detector(DEFAULT_DETECTOR, target_fpr=0.01, seed=0)
    assert isinstance(detector, CalibratedDetector)
    detector.fit(vectors, None, train_texts)
    view = fit_value_view(detector, vectors, None, train_texts, [v for _, v in train_pairs])
    assert view is not None

    prepared = [prep.prepare_values(t) for t in events]
    table = PatternTable("bench", max_entries=100_000)
    score_patterns([p for p, _ in prepared], embedder=embedder, detector=detector, table=table, values=view)
    hits: list[tuple[PatternScore, SlotValues]] = []
    for p, v in prepared:
        hit = table.get(p)
        assert hit is not None and hit.values is not None
        hits.append((hit, v))
    n = len(events)
    lookup = table.get
    event_score = event_score_fn

    def without() -> float:
        total = 0.0
        for raw in events:
            hit = lookup(prep.prepare(raw))
            assert hit is not None
            total += hit.score
        return total

    def with_values() -> float:
        total = 0.0
        for raw in events:
            text, values = prep.prepare_values(raw)
            hit = lookup(text)
            assert hit is not None
            total += event_score(hit, values)[0]
        return total

    decided = [event_score(h, v) for h, v in hits]
    bound_hits = [(h.values, v.values) for h, v in hits if h.values is not None]
    texts = [p for p, _ in prepared]
    figures = {
        "prepare_us": per_event(lambda: [prep.prepare(t) for t in events], n, args.repeat),
        "prepare_values_us": per_event(lambda: [prep.prepare_values(t) for t in events], n, args.repeat),
        "lookup_us": per_event(lambda: [lookup(t) for t in texts], n, args.repeat),
        "event_score_us": per_event(lambda: [event_score(h, v) for h, v in hits], n, args.repeat),
        "bound_score_us": per_event(lambda: [b.score(v) for b, v in bound_hits], n, args.repeat),
        "hit_path_without_us": per_event(without, n, args.repeat),
        "hit_path_with_us": per_event(with_values, n, args.repeat),
    }
    added = round(figures["hit_path_with_us"] - figures["hit_path_without_us"], 3)
    scores = np.array([s for s, _ in decided])
    return {
        "machine": platform.node(),
        "python": platform.python_version(),
        "datasets": list(args.datasets),
        "train_lines": len(train),
        "events": n,
        "patterns": len(table),
        "values_per_event": round(sum(len(v.values or ()) for _, v in prepared) / n, 2),
        "value_view": view.meta(),
        "events_with_value_evidence": round(
            float(
                np.mean(
                    [
                        h.values is not None and s != h.values.base_score
                        for (h, _), (s, _) in zip(hits, decided, strict=True)
                    ]
                )
            ),
            4,
        ),
        "events_with_finding": round(float(np.mean([f is not None for _, f in decided])), 4),
        "anomalous_share": round(float(np.mean(scores > 1.0)), 4),
        **figures,
        "added_us": added,
        "projected_ratio": {f"{t:.0f}us": round(t / (t + added), 3) for t in AGENT_US_PER_EVENT},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--datasets-dir", type=Path, default=DATASETS)
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=list(FILES))
    parser.add_argument(
        "--embedder", type=Path, default=None, help="exported embedder (default: cached export)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
