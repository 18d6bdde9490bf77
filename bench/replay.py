#!/usr/bin/env python3
"""Replay benchmark: real log streams through the agent and a real broker, patterns on and off.

Prints one JSON object (and writes it to ``--out``). One run, one machine, side by side:

``logs`` mode (the default)
    Real loghub lines (HDFS, BGL, Thunderbird from ``--datasets``) repeated to ``--events``
    events **with their variable fields re-drawn on every repetition** (``redraw``: every span a
    mask would replace — numbers, block ids, IPs, timestamps, BGL node ids, hex — gets new random
    digits, hex-like spans new hex letters, IPv4 octets stay valid), so raw lines rarely repeat
    while their prepared texts (patterns) do; a re-drawn line whose prepared text would differ
    from its original's is kept as it was (``redraw_kept_original`` counts them). The bundle is
    trained on the first half of each file's normal lines. Figures:

    - ``agent``: the whole backlog produced first, then ``anomaly-agent run`` (exactly-once); the
      clock runs from the first consumed record to the group's committed offsets reaching the
      end of every partition: events/s end to end and the pattern hit ratio;
    - ``agent_table_off``: the same on the first ``--baseline-events`` events with
      ``patterns.enabled = false`` (every event embedded), and ``ratio_table_on_vs_off``;
    - ``embedder_raw``: ``OnnxEmbedder.embed`` alone on the prepared texts of those events, in the
      agent's batch size: the raw embedder's events/s;
    - ``latency``: after one event of each of the stream's patterns (a warm table: the steady
      state), a producer at half the measured maximum rate for ``--latency-seconds``, events
      stamped with ``sent_at``; alerts read ``read_committed`` as they arrive: p50/p99
      event→alert. This phase runs with ``alerts.group_by = "event"`` (every anomalous event
      alerts, so every one is a latency sample, and each costs an alert record), at half the
      maximum of that configuration (``agent_one_alert_per_event``, measured like ``agent``);
      the other throughput figures use the default grouping;
    - ``agent_fused``: the same backlog with a bundle of train's default detector (``fused``,
      which reads the texts too) instead of ``knn``, and ``ratio_fused_vs_knn``;
    - ``agent_peak_rss_mib`` (VmHWM) and ``broker_cpu_share`` (broker CPU seconds / wall seconds
      during the end-to-end run; 1.0 = one core).

``sweep`` mode (``--mode sweep``)
    The log stream's end-to-end events/s and its latency at half that rate for every
    ``--sweep-sizes`` × ``--sweep-waits`` (``batch.max_size`` × ``batch.max_wait_ms``): how the
    defaults were chosen.

``unique`` mode (``--mode unique``)
    Texts that do not repeat (emotion tweets and SMS messages): end to end vs the raw embedder
    on the same texts and threads, for the fp32 and the int8 embedder (``knn`` bundles), and
    ``fp32_fused``: the fp32 agent with a ``fused`` bundle (train's default), ``ratio_fused_vs_knn``.

``values`` mode (``--mode values``)
    The value view's cost end to end (issue 19): train's default detector with the value view
    (the default) and without it (``--no-value-view``; masked either way, so the same patterns and
    pattern scores), both trained on the first half of each file's normal lines **re-drawn by the
    stream's own generator** (``redraw_lines``). The stream's values are random digits; a value
    view trained on the original lines would judge values of another distribution (measured:
    half the events then carry value evidence and an eighth take the explanation path, against
    4 % and 1.6 % with the fair training), which is not the cost it has in production. One
    backlog is produced once and read by a fresh group per run; the two bundles run
    ``--repeats`` times each, alternating (without, with, with, without, ...), so a load change on
    the machine hits both. Figures: each run's events/s (``end_to_end``), the ratio per pair and
    its median, the ratio of the medians, ``value_path`` (offline, the agent's own per-event calls:
    the shares anomalous, anomalous by the pattern alone, with value evidence and with a value
    finding) and one run of the value view trained on the original lines, for comparison.

The machine's load average is recorded before and after every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# The repository first (bench/agent.py must not shadow the agent package), then the shared Kafka
# test helpers (tests/) and the chaos suite's broker and commit watcher (bench/).
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests"), str(REPO_ROOT / "bench")]

from agent_helpers import AgentProcess, AgentTopics, agent_env, cli  # noqa: E402
from chaos import Broker, CommitWatcher, _load, _status_kib  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.cimpl import NewTopic  # noqa: E402

from agent.model.bundle import load_bundle  # noqa: E402
from agent.model.patterns import PatternTable, event_score, score_patterns  # noqa: E402
from agent.model.textprep import MASKS, TextPreparation  # noqa: E402

DEFAULT_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
LOG_SOURCES = {
    "hdfs": "hdfs_2k/HDFS_2k.log",
    "bgl": "bgl_2k/BGL_2k.log",
    "thunderbird": "thunderbird_2k/Thunderbird_2k.log",
}
PARTITIONS = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- data ----------------------------------------------------------------------------------------


def read_log(path: Path) -> tuple[list[str], list[str]]:
    """(normal, alert) lines without the loghub label token where the format has one."""
    normal: list[str] = []
    alerts: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        if "bgl" in path.name.lower() or "thunderbird" in path.name.lower():
            label, _, text = line.partition(" ")
            (normal if label == "-" else alerts).append(text)
        else:
            normal.append(line)
    return normal, alerts


_HEX_LETTERS = "abcdef"
# Masks whose letters are variable (hex digits); in the others letters are structure (blk_, R..-M.,
# the J and U of a BGL node, a URL's scheme) and stay.
_HEX_MASKS = frozenset({"uuid", "ipv6", "mac", "hex"})


def _redraw_span(span: str, mask: str, rng: random.Random) -> str:
    """New random characters of the same class: digits → digits, and hex letters → hex letters
    (case kept) in hex-like spans; IPv4 octets stay 0-255."""
    if mask == "ipv4":
        host, _, port = span.partition(":")
        octets = ".".join(str(rng.randrange(1, 255)) for _ in host.split("."))
        return octets + (":" + "".join(rng.choice("123456789") for _ in port) if port else "")
    out = []
    for ch in span:
        if ch.isascii() and ch.isdigit():
            out.append(rng.choice("0123456789"))
        elif mask in _HEX_MASKS and ch.lower() in _HEX_LETTERS:
            c = rng.choice(_HEX_LETTERS)
            out.append(c.upper() if ch.isupper() else c)
        else:
            out.append(ch)
    return "".join(out)


def redraw(line: str, rng: random.Random) -> str:
    """``line`` with every span a mask would replace re-drawn (see the module docstring)."""
    spans: list[tuple[int, int, str]] = []
    for mask in MASKS:
        for match in mask.pattern.finditer(line):
            if mask.accept is not None and not mask.accept(match):
                continue
            start, end = match.span()
            if start < end and not any(s < end and start < e for s, e, _ in spans):
                spans.append((start, end, mask.name))
    spans.sort()
    parts: list[str] = []
    last = 0
    for start, end, name in spans:
        parts += [line[last:start], _redraw_span(line[start:end], name, rng)]
        last = end
    return "".join([*parts, line[last:]])


def build_logs(datasets: Path, events: int, seed: int) -> tuple[list[str], list[str], int]:
    """(training texts, stream texts, re-drawn lines kept as they were)."""
    rng = random.Random(seed)
    prep = TextPreparation()
    train: list[str] = []
    pool: list[str] = []
    for rel in LOG_SOURCES.values():
        normal, alerts = read_log(datasets / rel)
        train += normal[: len(normal) // 2]
        pool += normal + alerts
    expected = {line: prep.prepare(line) for line in pool}
    stream: list[str] = []
    kept = 0
    while len(stream) < events:
        line = rng.choice(pool)
        new = redraw(line, rng)
        if prep.prepare(new) != expected[line]:
            new, kept = line, kept + 1
        stream.append(new)
    return train, stream, kept


def redraw_lines(lines: list[str], seed: int) -> tuple[list[str], int]:
    """Each line re-drawn once as the stream's are (``redraw``; kept as it was where its prepared
    text would change), and how many were kept: training data from the stream's own generator."""
    rng = random.Random(seed)
    prep = TextPreparation()
    out: list[str] = []
    kept = 0
    for line in lines:
        new = redraw(line, rng)
        if prep.prepare(new) != prep.prepare(line):
            new, kept = line, kept + 1
        out.append(new)
    return out, kept


def build_unique(datasets: Path, events: int) -> tuple[list[str], list[str]]:
    """(training texts, stream texts): emotion tweets for training, other tweets and SMS to score."""
    tweets = [json.loads(r)["text"] for r in (datasets / "emotion" / "train.jsonl").read_text().splitlines()]
    sms = [
        r.split("\t", 1)[1]
        for r in (datasets / "sms_spam" / "SMSSpamCollection").read_text(errors="replace").splitlines()[1:]
        if "\t" in r
    ]
    train = tweets[:3000]
    stream = list(dict.fromkeys(tweets[3000:] + sms))[:events]
    return train, stream


# --- measurements --------------------------------------------------------------------------------


class Run:
    """One broker for the whole benchmark, topics and agents on it."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.broker = Broker(work / "kafka")
        self._n = 0

    def topics(self, name: str, input_topic: str | None = None) -> AgentTopics:
        """Fresh topics and group; ``input_topic``: read that (already produced) topic instead."""
        self._n += 1
        base = f"replay-{name}-{self._n}"
        admin = AdminClient({"bootstrap.servers": self.broker.bootstrap})
        new = [
            *([NewTopic(f"{base}-in", num_partitions=PARTITIONS)] if input_topic is None else []),
            NewTopic(f"{base}-alerts", 1),
            NewTopic(f"{base}-dead", 1),
        ]
        for future in admin.create_topics(new, operation_timeout=30).values():
            future.result(timeout=60)
        return AgentTopics(input_topic or f"{base}-in", f"{base}-alerts", f"{base}-dead", f"{base}-group")

    def produce(self, topic: str, texts: list[str], stamp: bool = False) -> None:
        producer = Producer(
            {"bootstrap.servers": self.broker.bootstrap, "linger.ms": 20, "batch.size": 1_000_000}
        )
        for i, text in enumerate(texts):
            value = json.dumps(
                {"text": text, "seq": i, **({"sent_at": time.time()} if stamp else {})}
            ).encode()
            while True:
                try:
                    producer.produce(topic, value, partition=i % PARTITIONS)
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 1000 == 0:
                producer.poll(0)
        if producer.flush(120) != 0:
            raise SystemExit("replay: could not deliver the backlog")

    def agent(self, topics: AgentTopics, bundle: Path, name: str, **extra: str) -> AgentProcess:
        """The agent with the product's alert grouping (``alerts.group_by = "pattern"``) unless
        ``extra`` says otherwise (the latency phase times every alert: one per event)."""
        extra = {"alerts__group_by": "pattern", **extra}
        env = agent_env(
            self.broker.bootstrap, topics, bundle, instance_id=name,
            model__intra_op_threads=str(self.args.threads),
            batch__max_size=str(self.args.batch_size), batch__max_wait_ms=str(self.args.max_wait_ms),
            kafka__session_timeout_ms="45000", **extra,
        )  # fmt: skip
        return AgentProcess(env, self.work / f"{name}.log")


def train(run: Run, texts: list[str], name: str, embedder: Path, detector: str = "knn", *flags: str) -> Path:
    path = run.work / f"{name}-train.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = run.work / f"{name}-bundle"
    result = cli("train", "--input", str(path), "--text-field", "text", "--detector", detector,
                 "--embedder", str(embedder), "--out", str(out), *flags)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"replay: train failed:\n{result.stderr}")
    return out


def end_to_end(
    run: Run, bundle: Path, texts: list[str], name: str, produced: str | None = None, **extra: str
) -> dict[str, Any]:
    """The agent on a pre-produced backlog of ``texts``: events/s from first consume to all committed.
    ``produced``: an input topic that already holds ``texts`` (read by a fresh group)."""
    topics = run.topics(name, produced)
    if produced is None:
        run.produce(topics.input, texts)
    watcher = CommitWatcher(run.broker.bootstrap, topics.group, topics.input, PARTITIONS, interval_s=0.1)
    load = _load()
    agent = run.agent(topics, bundle, name, **extra)
    try:
        agent.wait_ready()
        while agent.metric("anomaly_agent_events_consumed_total") == 0:
            time.sleep(0.02)
        start = time.monotonic()
        broker_cpu = _cpu_seconds(run.broker)
        while True:
            samples = watcher.samples
            if samples:
                _, committed, ends = samples[-1]
                if committed and all(committed.get(p, -1) >= end for p, end in ends.items()):
                    break
            time.sleep(0.05)
        seconds = time.monotonic() - start
        broker_share = (_cpu_seconds(run.broker) - broker_cpu) / seconds
        metrics = agent.metrics()
        peak = _status_kib(agent.proc.pid, "VmHWM")
    finally:
        watcher.close()
    hits = metrics.get('anomaly_agent_pattern_lookups_total{result="hit"}', 0.0)
    misses = metrics.get('anomaly_agent_pattern_lookups_total{result="miss"}', 0.0)
    return {
        "events": len(texts),
        "seconds": round(seconds, 2),
        "events_per_s": round(len(texts) / seconds, 1),
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "patterns": metrics.get("anomaly_agent_patterns"),
        "alerts": metrics.get("anomaly_agent_alerts_published_total"),
        "transactions": metrics.get('anomaly_agent_transactions_total{result="committed"}'),
        "stage_seconds": {
            key.split('"')[1]: round(value, 2) for key, value in metrics.items()
            if key.startswith("anomaly_agent_stage_duration_seconds_sum")
        },
        "agent_peak_rss_mib": None if peak is None else round(peak / 1024, 1),
        "broker_cpu_share": round(broker_share, 2),
        "exit_code": agent.terminate(timeout=60),
        "load_before_after": [load, _load()],
    }  # fmt: skip


def raw_embedder(bundle: Path, texts: list[str], threads: int, batch_size: int) -> dict[str, Any]:
    """The bundle's embedder alone on the prepared texts, in the agent's batch size."""
    loaded = load_bundle(bundle)
    embedder = loaded.load_embedder(intra_op_threads=threads)
    prepared = [loaded.text_prep.prepare(t) for t in texts]
    load = _load()
    embedder.embed(prepared[:batch_size])  # warm-up
    start = time.monotonic()
    for i in range(0, len(prepared), batch_size):
        embedder.embed(prepared[i : i + batch_size])
    seconds = time.monotonic() - start
    return {
        "events": len(texts),
        "events_per_s": round(len(texts) / seconds, 1),
        "load_before_after": [load, _load()],
    }


def latency(run: Run, bundle: Path, texts: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """p50/p99 event→alert at ``rate`` events/s: alerts carry the event's ``sent_at`` field."""
    topics = run.topics("latency")
    agent = run.agent(topics, bundle, "latency-agent", alerts__group_by="event")
    samples: list[float] = []
    stop = threading.Event()

    def read_alerts() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": run.broker.bootstrap,
                "group.id": "latency-reader",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.assign([TopicPartition(topics.alerts, 0, 0)])
        while not stop.is_set():
            # poll, not consume(n, timeout): consume waits for n records or the whole timeout,
            # which would add up to the timeout to every sample.
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                sent = json.loads(msg.value() or b"{}").get("fields", {}).get("sent_at")
                if sent is not None:
                    samples.append(time.time() - float(sent))
        consumer.close()

    reader = threading.Thread(target=read_alerts, daemon=True)
    load = _load()
    try:
        agent.wait_ready()
        # Steady state, as in production: the table knows the stream's patterns before the clock runs.
        warm = list({TextPreparation().prepare(t): t for t in texts}.values())
        run.produce(topics.input, warm)
        while agent.metric("anomaly_agent_events_processed_total") < len(warm):
            time.sleep(0.1)
        reader.start()
        producer = Producer({"bootstrap.servers": run.broker.bootstrap, "linger.ms": 0})
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < seconds:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            text = texts[i % len(texts)]
            producer.produce(
                topics.input,
                json.dumps({"text": text, "sent_at": time.time()}).encode(),
                partition=i % PARTITIONS,
            )
            producer.poll(0)
            i += 1
        producer.flush(30)
        time.sleep(2)
    finally:
        stop.set()
        reader.join(timeout=10)
        code = agent.terminate(timeout=60)
    samples.sort()
    q = statistics.quantiles(samples, n=100) if len(samples) >= 100 else None
    return {
        "rate": round(rate, 1), "seconds": seconds, "events": i, "alerts_timed": len(samples),
        "p50_ms": None if q is None else round(q[49] * 1000, 1),
        "p99_ms": None if q is None else round(q[98] * 1000, 1),
        "max_ms": round(samples[-1] * 1000, 1) if samples else None,
        "exit_code": code, "load_before_after": [load, _load()],
    }  # fmt: skip


def _cpu_seconds(broker: Broker) -> float:
    try:
        pid = int((broker.state / "kafka.pid").read_text())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- main ----------------------------------------------------------------------------------------


def logs_mode(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    from training.export import cached_export

    train_texts, stream, kept = build_logs(args.datasets, args.events, args.seed)
    bundle = train(run, train_texts, "logs", cached_export())
    prep = TextPreparation()
    report: dict[str, Any] = {
        "events": len(stream),
        "distinct_raw_lines": len(set(stream)),
        "distinct_patterns": len({prep.prepare(t) for t in stream}),
        "redraw_kept_original": kept,
    }
    report["agent"] = end_to_end(run, bundle, stream, "logs-agent")
    fused = train(run, train_texts, "logs-fused", cached_export(), detector="fused")
    report["agent_fused"] = end_to_end(run, fused, stream, "logs-agent-fused")
    report["ratio_fused_vs_knn"] = round(
        report["agent_fused"]["events_per_s"] / report["agent"]["events_per_s"], 3
    )
    baseline = stream[: args.baseline_events]
    report["agent_table_off"] = end_to_end(run, bundle, baseline, "logs-agent-off", patterns__enabled="false")
    report["ratio_table_on_vs_off"] = round(
        report["agent"]["events_per_s"] / report["agent_table_off"]["events_per_s"], 1
    )
    report["embedder_raw"] = raw_embedder(bundle, baseline, args.threads, args.batch_size)
    report["ratio_table_on_vs_raw_embedder"] = round(
        report["agent"]["events_per_s"] / report["embedder_raw"]["events_per_s"], 1
    )
    # Latency is timed on alerts, so that phase alerts every anomalous event (group_by = event):
    # its maximum is measured too, and the latency is taken at half of it.
    report["agent_one_alert_per_event"] = end_to_end(
        run, bundle, stream, "logs-agent-event", alerts__group_by="event"
    )
    rate = args.latency_rate or report["agent_one_alert_per_event"]["events_per_s"] / 2
    report["latency"] = latency(run, bundle, stream, rate, args.latency_seconds)
    return report


def value_path(bundle: Path, texts: list[str], threads: int) -> dict[str, Any]:
    """Offline, through the agent's own calls (``prepare_values``, the pattern table,
    ``event_score``): the share of ``texts`` that are anomalous, anomalous by the pattern alone,
    carry value evidence (their score differs from their pattern's without it), and get a value
    finding (the alert's ``value``: the explanation path)."""
    loaded = load_bundle(bundle)
    embedder = loaded.load_embedder(intra_op_threads=threads)
    prep = loaded.text_prep
    pairs = [prep.prepare_values(t) for t in texts]
    results = score_patterns(
        [p for p, _ in pairs],
        embedder=embedder,
        detector=loaded.detector,
        table=PatternTable(loaded.sha256),
        values=loaded.values,
    )
    scores, pattern, evidence, findings = 0, 0, 0, 0
    for result, (_, slots) in zip(results, pairs, strict=True):
        assert result is not None
        score, finding = event_score(result, slots)
        scores += score > 1.0
        pattern += result.anomalous
        evidence += result.values is not None and score != result.values.base_score
        findings += finding is not None
    n = len(texts)
    return {
        "value_view": loaded.values is not None,
        "anomalous": round(scores / n, 4),
        "anomalous_by_pattern": round(pattern / n, 4),
        "with_value_evidence": round(evidence / n, 4),
        "with_value_finding": round(findings / n, 4),
    }


def values_mode(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """train's default detector with and without the value view on the log replay, same run."""
    from agent.model.defaults import DEFAULT_DETECTOR
    from training.export import cached_export

    train_texts, stream, kept = build_logs(args.datasets, args.events, args.seed)
    # The stream's values are re-drawn at random; trained on the original lines, the value view
    # would judge values of another distribution (half the events carry value evidence, an
    # eighth take the explanation path). Trained on lines from the stream's own generator it
    # sees the values it was fitted on, as in production: the comparison costs what it costs there.
    fair, fair_kept = redraw_lines(train_texts, args.seed + 1)
    bundles = {
        "with": train(run, fair, "values-on", cached_export(), DEFAULT_DETECTOR),
        "without": train(run, fair, "values-off", cached_export(), DEFAULT_DETECTOR, "--no-value-view"),
        "with_original_training": train(run, train_texts, "values-orig", cached_export(), DEFAULT_DETECTOR),
    }
    input_topic = run.topics("values-input").input
    run.produce(input_topic, stream)
    report: dict[str, Any] = {
        "detector": DEFAULT_DETECTOR,
        "events": len(stream),
        "distinct_raw_lines": len(set(stream)),
        "redraw_kept_original": kept,
        "training_lines": len(fair),
        "training_redraw_kept_original": fair_kept,
        "value_path": {name: value_path(b, stream, args.threads) for name, b in bundles.items()},
    }
    runs: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    for r in range(args.repeats):
        for name in ("without", "with") if r % 2 == 0 else ("with", "without"):
            runs[name].append(end_to_end(run, bundles[name], stream, f"values-{name}-{r}", input_topic))
            print(json.dumps({name: runs[name][-1]}), file=sys.stderr, flush=True)
    ratios = [
        round(w["events_per_s"] / wo["events_per_s"], 3)
        for w, wo in zip(runs["with"], runs["without"], strict=True)
    ]
    report["agent_without_values"] = runs["without"]
    report["agent_with_values"] = runs["with"]
    report["ratio_with_vs_without"] = ratios
    report["ratio_median"] = statistics.median(ratios)
    report["ratio_of_medians"] = round(
        statistics.median(x["events_per_s"] for x in runs["with"])
        / statistics.median(x["events_per_s"] for x in runs["without"]),
        3,
    )
    report["agent_with_values_original_training"] = end_to_end(
        run, bundles["with_original_training"], stream, "values-orig", input_topic
    )
    return report


def unique_mode(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    from training.export import cached_export

    train_texts, stream = build_unique(args.datasets, args.unique_events)
    report: dict[str, Any] = {"events": len(stream)}
    for variant, int8 in (("fp32", False), ("int8", True)):
        bundle = train(run, train_texts, f"unique-{variant}", cached_export(int8=int8))
        agent = end_to_end(run, bundle, stream, f"unique-{variant}-agent")
        raw = raw_embedder(bundle, stream, args.threads, args.batch_size)
        rate = agent["events_per_s"] / 2
        report[variant] = {
            "agent": agent,
            "embedder_raw": raw,
            "ratio_end_to_end_vs_raw": round(agent["events_per_s"] / raw["events_per_s"], 3),
            "latency": latency(run, bundle, stream, rate, args.latency_seconds),
        }
    # train's default detector reads the texts too (lexical measures): what it costs per event
    # where nothing repeats, beside knn on the same fp32 embedder.
    bundle = train(run, train_texts, "unique-fused", cached_export(), detector="fused")
    fused = end_to_end(run, bundle, stream, "unique-fused-agent")
    report["fp32_fused"] = {
        "agent": fused,
        "ratio_fused_vs_knn": round(fused["events_per_s"] / report["fp32"]["agent"]["events_per_s"], 3),
    }
    return report


def sweep_mode(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """``batch.max_size`` × ``batch.max_wait_ms`` on the log stream: events/s end to end and
    latency at half each setting's own maximum, to choose the defaults by measurement."""
    from training.export import cached_export

    train_texts, stream, _ = build_logs(args.datasets, args.events, args.seed)
    bundle = train(run, train_texts, "sweep", cached_export())
    settings: list[dict[str, Any]] = []
    for size in args.sweep_sizes:
        for wait in args.sweep_waits:
            args.batch_size, args.max_wait_ms = size, wait
            agent = end_to_end(run, bundle, stream, f"sweep-{size}-{wait}")
            settings.append(
                {
                    "batch_max_size": size,
                    "batch_max_wait_ms": wait,
                    "agent": agent,
                    "latency": latency(run, bundle, stream, agent["events_per_s"] / 2, args.latency_seconds),
                }
            )
            print(json.dumps(settings[-1]), file=sys.stderr, flush=True)
    return {"events": len(stream), "settings": settings}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("logs", "unique", "both", "sweep", "values"), default="logs")
    parser.add_argument("--repeats", type=int, default=3, help="values: runs of each bundle, alternating")
    parser.add_argument(
        "--sweep-sizes", type=_ints, default=[64, 256, 1024, 4096], help="sweep: batch.max_size"
    )
    parser.add_argument("--sweep-waits", type=_ints, default=[100], help="sweep: batch.max_wait_ms")
    parser.add_argument("--events", type=int, default=200_000, help="log replay length")
    parser.add_argument("--baseline-events", type=int, default=2_000, help="events of the table-off run")
    parser.add_argument("--unique-events", type=int, default=2_000)
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="events/s of the latency phase (default: half the maximum)",
    )
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=None, help="batch.max_size (default: the agent's)")
    parser.add_argument(
        "--max-wait-ms", type=int, default=None, help="batch.max_wait_ms (default: the agent's)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", type=Path, help="work here and keep it (logs)")
    args = parser.parse_args(argv)
    from agent.config import BatchSettings

    defaults = BatchSettings()
    args.batch_size = args.batch_size or defaults.max_size
    args.max_wait_ms = args.max_wait_ms or defaults.max_wait_ms
    return args


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict[str, Any] = {
        "bench": "replay",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_at_start": _load()},
        "settings": {
            "threads": args.threads,
            "batch_max_size": args.batch_size,
            "batch_max_wait_ms": args.max_wait_ms,
        },
    }
    with _workdir(args.keep) as work:
        run = Run(work, args)
        run.broker.start()
        try:
            if args.mode in ("logs", "both"):
                report["logs"] = logs_mode(run, args)
                print(json.dumps({"logs": report["logs"]}), file=sys.stderr, flush=True)
            if args.mode in ("unique", "both"):
                report["unique"] = unique_mode(run, args)
            if args.mode == "sweep":
                report["sweep"] = sweep_mode(run, args)
            if args.mode == "values":
                report["values"] = values_mode(run, args)
        finally:
            run.broker.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
