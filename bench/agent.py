#!/usr/bin/env python3
"""Benchmark: the agent end to end through a real broker, side by side with the raw embedder.

Prints one JSON object (and writes it to ``--out`` when given). One run, one machine, the same
texts and the same onnxruntime thread count for every figure:

(a) ``embedder_raw``: ``OnnxEmbedder.embed`` alone, loaded from the bench bundle exactly as the
    agent loads it (``Bundle.load_embedder(intra_op_threads)``), on the bundle's *prepared* texts
    (what the model sees in the agent) in slices of the agent's ``batch.max_size``. Measured
    before and after (b), with the broker idle and no agent running; the mean is the reference.
(b) ``agent_end_to_end``: ``--events`` records are produced to a fresh input topic first, then
    ``anomaly-agent run`` starts (its own process, exactly-once delivery, alerts in Kafka
    transactions); the clock runs from the first consumed record (the agent's
    ``anomaly_agent_events_consumed_total`` turns non-zero) to the moment its group's committed
    offset reaches the end of the topic — so decode, text preparation, embedding, scoring,
    alert production and transactional commits are all inside the figure.
    ``ratio_end_to_end_vs_raw`` = b / a (target >= 0.8). Because (a) and (b) run at different
    moments, a busy machine skews that ratio either way; ``ratio_end_to_end_vs_embed_stage``
    answers the same question from inside the agent over the same window: b / (events per
    second of the agent's own ``embed`` stage — text preparation + embedding — from
    ``anomaly_agent_stage_duration_seconds``). It is immune to load drift, and leaves out only a
    cost the agent's embedder might have over a standalone one.
(c) ``latency``: with the agent still running, a rate-limited producer sends events at half of
    (b)'s rate for ``--latency-seconds``, stamping ``sent_at`` (epoch seconds) in each event; the
    agent carries event fields into the alert, so a ``read_committed`` reader computes
    alert-arrival minus ``sent_at`` for every alert: p50/p99 event→alert latency, the Kafka
    transaction commit included.
(d) ``agent_rss``: the agent process's peak resident set (``VmHWM`` in /proc/<pid>/status) and
    its RSS at the end, read just before it is stopped.

The bundle is trained on Thunderbird and HDFS lines; the stream mixes those with BGL lines
(``--anomalous-share``, default 10 %) from a different system, so a known share of events is
anomalous and (c) has latency samples. Dataset lines come from ``--datasets``
(default ../shared/datasets); the BGL/Thunderbird label token is stripped.

The broker: ``--bootstrap`` or ``$KAFKA_BOOTSTRAP_SERVERS`` when given, otherwise an isolated
one started with ``deploy/local/kafka.sh --dir <tmp> --owner-pid`` and stopped at the end. On a
shared 2-core machine the broker's CPU competes with the agent's; ``broker_cpu_seconds`` (when
the broker is ours) shows how much.

Default run: a few minutes; ``--quick`` is a CI-sized smoke run (the figures are noisier).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka.sh"
DEFAULT_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
NORMAL_SOURCES = {"thunderbird": "thunderbird_2k/Thunderbird_2k.log", "hdfs": "hdfs_2k/HDFS_2k.log"}
ANOMALOUS_SOURCE = "bgl_2k/BGL_2k.log"
TRAIN_PER_SOURCE = 1000
READY_TIMEOUT_S = 180.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- data ----------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    """Log lines without the loghub label token (``-`` or an alert tag) where the format has one."""
    lines = [line.rstrip("\n") for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if "bgl" in path.name.lower() or "thunderbird" in path.name.lower():
        lines = [line.split(" ", 1)[1] for line in lines if " " in line]
    return lines


def build_texts(
    datasets: Path, events: int, anomalous_share: float, seed: int
) -> tuple[list[str], list[str]]:
    """(training texts, stream texts): train on the first lines of each normal source; the stream
    draws normal lines from all of them and BGL lines with probability ``anomalous_share``."""
    normal: list[str] = []
    train: list[str] = []
    for rel in NORMAL_SOURCES.values():
        lines = read_lines(datasets / rel)
        train += lines[:TRAIN_PER_SOURCE]
        normal += lines
    anomalous = read_lines(datasets / ANOMALOUS_SOURCE)
    rng = random.Random(seed)
    stream = [
        rng.choice(anomalous) if rng.random() < anomalous_share else rng.choice(normal) for _ in range(events)
    ]
    return train, stream


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def broker(explicit: str | None, work: Path) -> Iterator[tuple[str, int | None]]:
    """(bootstrap, broker pid or None): the given broker, or an isolated one for this run."""
    if explicit:
        yield explicit, None
        return
    state = work / "kafka"
    started = subprocess.run(
        ["bash", str(KAFKA_SH), "start", "--dir", str(state), "--owner-pid", str(os.getpid())],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        raise SystemExit(f"bench: deploy/local/kafka.sh start failed (exit {started.returncode})")
    try:
        pid = int((state / "kafka.pid").read_text().strip())
        yield started.stdout.strip().splitlines()[-1], pid
    finally:
        subprocess.run(
            ["bash", str(KAFKA_SH), "stop", "--dir", str(state)], stdout=subprocess.DEVNULL, check=False
        )


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process (whole process, all threads) from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def scrape(url: str) -> dict[str, float]:
    """Every sample of the agent's /metrics as ``name{labels}`` -> value ({} when unreachable)."""
    status, body = http_get(url)
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def stage_seconds(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds spent per loop stage between two scrapes (from the stage_duration histogram sums)."""
    prefix = "anomaly_agent_stage_duration_seconds_sum{stage="
    return {
        key[len(prefix) : -1]: round(after[key] - before.get(key, 0.0), 3)
        for key in after
        if key.startswith(prefix)
    }


# --- kafka helpers -------------------------------------------------------------------------------


def create_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics]
    ).values():
        future.result(timeout=60)


def produce_all(bootstrap: str, topic: str, texts: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for i, text in enumerate(texts):
        while True:
            try:
                producer.produce(topic, json.dumps({"text": text, "seq": i}).encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise SystemExit("bench: could not deliver every pre-produced event")


class CommitProbe:
    """Reads the agent group's committed offset on the input partition (a consumer that never joins)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self.tp = TopicPartition(topic, 0)

    def committed(self) -> int:
        offset: int = self.consumer.committed([self.tp], timeout=10)[0].offset
        return max(offset, 0)

    def close(self) -> None:
        self.consumer.close()


class Agent:
    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"bench: the agent exited with {self.process.returncode}:\n{tail}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return int(self.process.returncode)


def write_config(
    path: Path, *, bootstrap: str, topics: dict[str, str], group: str, bundle: Path, args: argparse.Namespace
) -> tuple[str, str]:
    metrics_port, health_port = free_port(), free_port()
    path.write_text(
        f"""delivery = "exactly_once"
instance_id = "bench"
log_level = "WARNING"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
[topics]
input = ["{topics["input"]}"]
alerts = "{topics["alerts"]}"
dead_letter = "{topics["dead_letter"]}"
[model]
bundle = "{bundle}"
watch = false
intra_op_threads = {args.threads}
[events]
format = "json"
text_field = "text"
[batch]
max_size = {args.batch_size}
max_wait_ms = {args.max_wait_ms}
[alerts]
group_by = "{args.group_by}"
[metrics]
port = {metrics_port}
[health]
port = {health_port}
"""
    )
    return f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{health_port}/readyz"


# --- the three measurements ----------------------------------------------------------------------


def measure_raw(bundle_dir: Path, texts: list[str], threads: int, batch_size: int) -> float:
    """Events/s of the embedder alone on the prepared texts, in the agent's batch slices (one warm-up)."""
    from agent.model.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    embedder = bundle.load_embedder(intra_op_threads=threads)
    prepared = [bundle.text_prep.prepare(t) for t in texts]
    embedder.embed(prepared[:batch_size])  # warm-up: session initialisation, allocator growth
    start = time.perf_counter()
    for i in range(0, len(prepared), batch_size):
        embedder.embed(prepared[i : i + batch_size])
    return len(prepared) / (time.perf_counter() - start)


def measure_end_to_end(
    agent: Agent, probe: CommitProbe, metrics_url: str, events: int, timeout_s: float
) -> tuple[float, float]:
    """(events/s, seconds) from the first consumed record to the committed end offset."""
    deadline = time.monotonic() + timeout_s
    first: float | None = None
    while first is None:
        agent.check_alive()
        if scrape(metrics_url).get("anomaly_agent_events_consumed_total", 0.0) > 0:
            first = time.monotonic()
        elif time.monotonic() > deadline:
            raise SystemExit("bench: the agent consumed nothing")
        else:
            time.sleep(0.02)
    while probe.committed() < events:
        agent.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit(
                f"bench: the agent committed {probe.committed()}/{events} offsets in {timeout_s:.0f}s"
            )
        time.sleep(0.05)
    seconds = time.monotonic() - first
    return events / seconds, seconds


def measure_latency(
    *,
    bootstrap: str,
    topics: dict[str, str],
    texts: list[str],
    rate: float,
    duration_s: float,
    probe: CommitProbe,
    offset_before: int,
    agent: Agent,
) -> dict[str, Any]:
    """Send at ``rate`` for ``duration_s``; event→alert latency of every alert for these events."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-latency-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    reader.assign([TopicPartition(topics["alerts"], 0, OFFSET_END)])
    reader.poll(0.5)  # let the assignment settle at the end before anything new is sent
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    latencies: list[float] = []

    def read(timeout: float) -> None:
        message = reader.poll(timeout)
        if message is None or message.error():
            return
        arrived = time.time()
        alert = json.loads(message.value() or b"{}")
        sent_at = alert.get("fields", {}).get("sent_at")
        if isinstance(sent_at, int | float):
            latencies.append(arrived - sent_at)

    count = max(1, int(rate * duration_s))
    start = time.monotonic()
    for i in range(count):
        due = start + i / rate
        while (wait := due - time.monotonic()) > 0:
            read(min(wait, 0.01))
        event = {"text": texts[i % len(texts)], "seq": i, "sent_at": time.time()}
        producer.produce(topics["input"], json.dumps(event).encode())
        producer.poll(0)
    producer.flush(30)
    send_seconds = time.monotonic() - start
    deadline = time.monotonic() + 60
    while probe.committed() < offset_before + count and time.monotonic() < deadline:
        agent.check_alive()
        read(0.05)
    settle = time.monotonic() + 2
    while time.monotonic() < settle:
        read(0.05)
    reader.close()
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return {"rate_events_per_s": round(rate, 1), "events": count, "alerts": 0}
    quantiles = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {
        "rate_events_per_s": round(rate, 1),
        "achieved_send_rate_events_per_s": round(count / send_seconds, 1),
        "events": count,
        "alerts": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(quantiles[98], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "max_ms": round(ms[-1], 1),
    }


# --- main ----------------------------------------------------------------------------------------


def train_bundle(train_texts: list[str], work: Path, detector: str) -> Path:
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in train_texts))
    out = work / "bundle"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "agent.cli", "train", "--input", str(data), "--text-field", "text"]
    command += ["--detector", detector, "--out", str(out)]
    done = subprocess.run(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"bench: training failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from agent.config import BatchSettings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--events", type=int, default=None, help="events for (a) and (b) (default 2000, quick 600)"
    )
    p.add_argument("--latency-seconds", type=float, default=None, help="length of (c) (default 30, quick 8)")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads, both sides"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=BatchSettings().max_size,
        help="the agent's batch.max_size, and (a)'s slice size (default: the agent's)",
    )
    p.add_argument(
        "--max-wait-ms", type=int, default=BatchSettings().max_wait_ms, help="the agent's batch.max_wait_ms"
    )
    p.add_argument(
        "--group-by",
        choices=("pattern", "event"),
        default="pattern",
        help="alerts.group_by (the agent's default: pattern); (c) times alerts, so with pattern it has few",
    )
    p.add_argument(
        "--anomalous-share", type=float, default=0.1, help="share of BGL (anomalous) lines in the stream"
    )
    p.add_argument(
        "--detector",
        default="knn",
        help="detector of the bench bundle (knn: the throughput reference; train's default is fused)",
    )
    p.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), help="use this broker")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="CI-sized run: fewer events, shorter latency phase")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.events is None:
        args.events = 600 if args.quick else 2000
    if args.latency_seconds is None:
        args.latency_seconds = 8.0 if args.quick else 30.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    train_texts, stream = build_texts(args.datasets, args.events, args.anomalous_share, args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    try:
        result = run(args, work, train_texts, stream)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


def run(args: argparse.Namespace, work: Path, train_texts: list[str], stream: list[str]) -> dict[str, Any]:
    from agent.model.bundle import load_bundle

    bundle_dir = train_bundle(train_texts, work, args.detector)
    bundle = load_bundle(bundle_dir)
    load_at_start = os.getloadavg()[0]
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    topics = {k: f"bench-{k.replace('_', '-')}-{run_id}" for k in ("input", "alerts", "dead_letter")}
    group = f"bench-agent-{run_id}"
    with broker(args.bootstrap, work) as (bootstrap, broker_pid):
        create_topics(bootstrap, list(topics.values()))
        raw_before = measure_raw(bundle_dir, stream, args.threads, args.batch_size)
        produce_all(bootstrap, topics["input"], stream)
        metrics_url, readyz_url = write_config(
            work / "agent.toml", bootstrap=bootstrap, topics=topics, group=group, bundle=bundle_dir, args=args
        )
        probe = CommitProbe(bootstrap, group, topics["input"])
        agent = Agent(work / "agent.toml", work / "agent.log")
        try:
            broker_cpu_0, agent_cpu_0 = cpu_seconds(broker_pid), cpu_seconds(agent.pid)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while http_get(readyz_url)[0] != 200 and agent.process.poll() is None:
                agent_cpu_0 = cpu_seconds(agent.pid)
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the agent was not ready in time")
                time.sleep(0.02)
            # The agent may consume a first batch before /readyz answers; the clock starts at the
            # first consumed record either way (measure_end_to_end), not at readiness.
            scrape_before = scrape(metrics_url)
            e2e_rate, e2e_seconds = measure_end_to_end(agent, probe, metrics_url, args.events, timeout_s=900)
            scrape_after = scrape(metrics_url)
            broker_cpu = cpu_seconds(broker_pid)
            agent_cpu = cpu_seconds(agent.pid)
            alerts_b = scrape_after.get("anomaly_agent_alerts_published_total", 0.0)

            latency = measure_latency(
                bootstrap=bootstrap,
                topics=topics,
                texts=stream,
                rate=e2e_rate / 2,
                duration_s=args.latency_seconds,
                probe=probe,
                offset_before=args.events,
                agent=agent,
            )
            peak_kib = proc_status_kib(agent.pid, "VmHWM")
            end_kib = proc_status_kib(agent.pid, "VmRSS")
        finally:
            exit_code = agent.stop()
            probe.close()
        raw_after = measure_raw(bundle_dir, stream, args.threads, args.batch_size)

    raw = (raw_before + raw_after) / 2
    stages = stage_seconds(scrape_before, scrape_after)
    embed_s = stages.get("embed")
    processed = "anomaly_agent_events_processed_total"
    embedded = scrape_after.get(processed, 0.0) - scrape_before.get(processed, 0.0)
    return {
        "bench": "agent",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": _cpu_model(),
            "python": platform.python_version(),
            # Other work on the machine skews every figure; this says how busy it was.
            "loadavg_1m_at_start": round(load_at_start, 2),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "params": {
            "events": args.events,
            "intra_op_threads": args.threads,
            "batch_max_size": args.batch_size,
            "batch_max_wait_ms": args.max_wait_ms,
            "delivery": "exactly_once",
            "group_by": args.group_by,
            "detector": bundle.detector_name,
            "model_id": bundle.model_id,
            "texts": "thunderbird_2k + hdfs_2k lines, BGL lines as the anomalous share",
            "anomalous_share": args.anomalous_share,
            "mean_text_chars": round(statistics.fmean(len(t) for t in stream), 1),
            "broker": "external" if broker_pid is None else "isolated (deploy/local/kafka.sh), same machine",
            "quick": args.quick,
        },
        "embedder_raw": {
            "events_per_s": round(raw, 1),
            "events_per_s_before": round(raw_before, 1),
            "events_per_s_after": round(raw_after, 1),
        },
        "agent_end_to_end": {
            "events_per_s": round(e2e_rate, 1),
            "seconds": round(e2e_seconds, 2),
            "alerts": int(alerts_b),
            "alerts_per_1000_events": round(1000 * alerts_b / args.events, 1),
            "summaries": int(scrape_after.get("anomaly_agent_alert_summaries_published_total", 0.0)),
            "suppressed": int(scrape_after.get("anomaly_agent_alerts_suppressed_total", 0.0)),
            "stage_seconds": stages,
            "agent_cpu_seconds_until_done": None
            if agent_cpu is None or agent_cpu_0 is None
            else round(agent_cpu - agent_cpu_0, 2),
            "broker_cpu_seconds_until_done": None
            if broker_cpu is None or broker_cpu_0 is None
            else round(broker_cpu - broker_cpu_0, 2),
        },
        "ratio_end_to_end_vs_raw": round(e2e_rate / raw, 3),
        "target_ratio": 0.8,
        # The same question measured inside the agent over the same window, immune to the load
        # drifting between (a) and (b): end-to-end rate / the rate of the agent's own embed stage.
        "embed_stage_events_per_s": None if not embed_s else round(embedded / embed_s, 1),
        "ratio_end_to_end_vs_embed_stage": None if not embed_s else round(e2e_rate * embed_s / embedded, 3),
        "latency": latency,
        "agent_rss": {
            "peak_mib": None if peak_kib is None else round(peak_kib / 1024, 1),
            "end_mib": None if end_kib is None else round(end_kib / 1024, 1),
        },
        "agent_exit_code": exit_code,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    # Run as a script, sys.path[0] is bench/, where this very file would shadow the agent package
    # (hence the function-level imports of agent.*); `python -m bench.agent` needs no fix-up.
    sys.path[0] = str(REPO_ROOT)
    sys.exit(main())
