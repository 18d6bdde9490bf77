"""The Alertmanager sink against a real Alertmanager (Debian's prometheus-alertmanager, run by
deploy/local/alertmanager.sh, which installs the package itself on a clean machine as root).

* Alerts arrive with the mapped labels, annotations and cooldown end (read back through
  ``GET /api/v2/alerts``), and a summary with the same labels updates that one alert (its
  ``suppressed`` count) and, once its window has ended, resolves it.
* A server that is down when alerts are submitted gets them once it is up: the failed POSTs are
  retried with backoff and counted, then succeed.
* A full queue drops its oldest alerts, counts them, and delivers the newest.
* ``submit`` returns at once while a server accepts connections and never answers, and ``close``
  gives up after its time-out, counting what it could not deliver.

The team rule of kafka_fixtures.py holds here too: what claims Alertmanager behaviour is tested
against the real server, not a fake (the hung server below stands in for a broken network, which
no real Alertmanager does on request).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from shared_resources import Stop, shared

from exporters.alertmanager import AlertmanagerSink, alertmanager_alert
from exporters.metrics import AgentMetrics

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER_SH = REPO_ROOT / "deploy" / "local" / "alertmanager.sh"
# The first start on a clean machine installs the Debian package (apt-get update + install).
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 30.0
COOLDOWN_S = 600.0


def _env() -> dict[str, str]:
    """This process's environment without the knobs that would point the script elsewhere."""
    return {k: v for k, v in os.environ.items() if k not in ("ALERTMANAGER_PORT", "ALERTMANAGER_STATE_DIR")}


def alertmanager_sh(*args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run deploy/local/alertmanager.sh with ``args`` (never raises for its exit code)."""
    command = [str(ALERTMANAGER_SH), *args]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)


def _start_alertmanager(state_dir: Path, owner_pid: int, *options: str) -> tuple[str, Stop]:
    """A real Alertmanager in ``state_dir``, stopped by the script's watchdog when ``owner_pid``
    ends; its base URL and how to stop it."""
    started = alertmanager_sh("start", "--dir", str(state_dir), "--owner-pid", str(owner_pid), *options)
    if started.returncode != 0 or not started.stdout.split():
        pytest.fail(
            f"Alertmanager did not start (exit {started.returncode}):\n{started.stderr}", pytrace=False
        )
    return started.stdout.split()[-1], Stop([str(ALERTMANAGER_SH), "stop", "--dir", str(state_dir)], _env())


@contextmanager
def local_alertmanager(state_dir: Path, *options: str) -> Iterator[str]:
    """An Alertmanager of the caller's own; yields its base URL, stops it after."""
    url, _ = _start_alertmanager(state_dir, os.getpid(), *options)
    try:
        yield url
    finally:
        stopped = alertmanager_sh("stop", "--dir", str(state_dir), timeout=STOP_TIMEOUT_S)
        if stopped.returncode != 0:
            raise RuntimeError(f"alertmanager.sh stop failed (exit {stopped.returncode}):\n{stopped.stderr}")


@pytest.fixture(scope="session")
def alertmanager_url(pytestconfig: pytest.Config) -> str:
    """Base URL of one real Alertmanager for the run, shared by every xdist worker (tests keep
    apart by alertname)."""
    url: str = shared(pytestconfig, "alertmanager", _start_alertmanager)
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique_alertname() -> str:
    return f"TextAnomalyTest{uuid.uuid4().hex[:10]}"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_doc(detected_at: datetime, *, pattern_id: str, offset: int = 1, **overrides: Any) -> dict[str, Any]:
    """A schema v2 alert document (docs/alert-schema.md)."""
    doc: dict[str, Any] = {
        "schema_version": 2,
        "kind": "alert",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"events/0/{offset}")),
        "source": {"topic": "events", "partition": 0, "offset": offset, "key": None, "key_encoding": None},
        "text": f"disk /dev/sda{offset} failed: I/O error at sector {offset * 512}",
        "text_truncated": False,
        "text_length": 40,
        "score": 1.4242,
        "threshold": 1.0,
        "raw_threshold": 0.3,
        "detector": "kmeans",
        "cluster": {"id": 2, "label": None},
        "distance": 0.42,
        "model": {"id": "it-model", "sha256": "ab" * 32},
        "detected_at": iso(detected_at),
        "agent": "agent-it",
        "fields": {"service": "storage", "host": f"node-{offset}"},
        "pattern": {
            "id": pattern_id,
            "template": "disk <PATH> failed: I/O error at sector <NUM>",
            "known": False,
            "first_seen": iso(detected_at),
        },
        "neighbours": [{"text": "disk <PATH> mounted", "similarity": 0.71}],
        "group": {
            "by": "pattern",
            "cooldown_seconds": COOLDOWN_S,
            "window_start": iso(detected_at),
            "window_end": iso(detected_at + timedelta(seconds=COOLDOWN_S)),
            "suppressed": 0,
            "max_score": 1.4242,
        },
    }
    doc.update(overrides)
    return doc


def get_alerts(url: str, alertname: str) -> list[dict[str, Any]]:
    """The active alerts named ``alertname`` (GET /api/v2/alerts with a label filter)."""
    query = urllib.parse.urlencode({"filter": f'alertname="{alertname}"'})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=10) as response:
        alerts: list[dict[str, Any]] = json.load(response)
    return alerts


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DELIVERY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def posts(metrics: AgentMetrics, result: str) -> float:
    return sample(metrics, "anomaly_agent_alertmanager_posts_total", result=result)


def dropped(metrics: AgentMetrics) -> float:
    return sample(metrics, "anomaly_agent_alertmanager_alerts_dropped_total")


def queued(metrics: AgentMetrics) -> float:
    return sample(metrics, "anomaly_agent_alertmanager_queue")


@contextmanager
def running(sink: AlertmanagerSink, close_timeout_s: float = 10.0) -> Iterator[AlertmanagerSink]:
    sink.start()
    try:
        yield sink
    finally:
        sink.close(close_timeout_s)


def test_alert_arrives_with_labels_annotations_and_cooldown_end(alertmanager_url: str) -> None:
    alertname, metrics = unique_alertname(), AgentMetrics()
    doc = alert_doc(datetime.now(UTC), pattern_id=uuid.uuid4().hex)
    expected = alertmanager_alert(
        doc, label_fields=("service",), alertname=alertname, cooldown_seconds=COOLDOWN_S, generator_url=None
    )
    sink = AlertmanagerSink(
        alertmanager_url, label_fields=("service",), alertname=alertname, cooldown_seconds=COOLDOWN_S,
        metrics=metrics, generator_url="http://grafana.example/d/anomalies",
    )  # fmt: skip
    with running(sink):
        sink.submit([doc])
        wait_for(lambda: len(get_alerts(alertmanager_url, alertname)) == 1, "the alert in Alertmanager")
    (got,) = get_alerts(alertmanager_url, alertname)
    assert got["labels"] == expected["labels"]
    assert got["labels"]["service"] == "storage"
    assert got["labels"]["cluster"] == "2"
    assert got["annotations"] == expected["annotations"]
    assert got["annotations"]["neighbours"] == "0.71  disk <PATH> mounted"
    assert got["startsAt"] == doc["detected_at"]
    assert (
        got["endsAt"]
        == expected["endsAt"]
        == iso(datetime.fromisoformat(doc["detected_at"]) + timedelta(seconds=COOLDOWN_S))
    )
    assert got["generatorURL"] == "http://grafana.example/d/anomalies"
    assert got["status"]["state"] == "active"
    assert posts(metrics, "success") == 1
    assert posts(metrics, "failure") == 0
    assert dropped(metrics) == 0
    assert queued(metrics) == 0


def test_summary_with_the_same_labels_updates_then_resolves_the_alert(alertmanager_url: str) -> None:
    """The summary of a cooldown window is the same alert to Alertmanager (same labels): it carries
    the final count into that alert instead of opening a second one, and resolves it.

    The first summary's window still runs for a minute (detected_at in the future), so the alert
    stays active and ``GET /api/v2/alerts`` (which lists active alerts only) shows its new
    annotations; the second, whose window ended now, resolves it.
    """
    alertname, metrics = unique_alertname(), AgentMetrics()
    now = datetime.now(UTC)
    first = alert_doc(now - timedelta(seconds=30), pattern_id=uuid.uuid4().hex, offset=10)
    window = {"window_start": first["detected_at"]}

    def summary(detected_at: datetime, suppressed: int, offset: int) -> dict[str, Any]:
        doc = alert_doc(
            detected_at, pattern_id=first["pattern"]["id"], offset=offset, kind="summary", score=2.0
        )
        doc["group"] = dict(doc["group"], **window, window_end=iso(detected_at), suppressed=suppressed)
        doc["fields"] = first["fields"]  # the label fields are those of the window's alert
        return doc

    sink = AlertmanagerSink(
        alertmanager_url, label_fields=("service",), alertname=alertname, cooldown_seconds=COOLDOWN_S,
        metrics=metrics,
    )  # fmt: skip
    with running(sink):
        sink.submit([first])
        wait_for(lambda: len(get_alerts(alertmanager_url, alertname)) == 1, "the first alert")
        sink.submit([summary(now + timedelta(seconds=60), suppressed=41, offset=99)])
        wait_for(lambda: posts(metrics, "success") == 2, "the summary's POST")
        (got,) = get_alerts(alertmanager_url, alertname)
        assert got["annotations"]["suppressed"] == "41"
        assert got["annotations"]["source"] == "events/0/99"
        assert got["annotations"]["score"] == "2.00"
        assert got["startsAt"] == first["detected_at"]

        sink.submit([summary(datetime.now(UTC), suppressed=42, offset=100)])
        wait_for(lambda: get_alerts(alertmanager_url, alertname) == [], "the alert to be resolved")
    assert dropped(metrics) == 0


def test_alerts_submitted_while_the_server_is_down_arrive_after_it_starts(tmp_path: Path) -> None:
    port, alertname, metrics = free_port(), unique_alertname(), AgentMetrics()
    url = f"http://127.0.0.1:{port}"
    sink = AlertmanagerSink(
        url, label_fields=(), alertname=alertname, cooldown_seconds=COOLDOWN_S, metrics=metrics
    )
    docs = [alert_doc(datetime.now(UTC), pattern_id=uuid.uuid4().hex, offset=i) for i in range(3)]
    with running(sink):
        sink.submit(docs)
        wait_for(lambda: posts(metrics, "failure") >= 2, "failed POSTs to the stopped server")
        assert posts(metrics, "success") == 0
        assert queued(metrics) == 3  # the batch being retried
        with local_alertmanager(tmp_path / "am", "--port", str(port)) as started_url:
            assert started_url == url
            wait_for(lambda: len(get_alerts(url, alertname)) == 3, "the retried alerts")
            assert posts(metrics, "success") == 1
            assert dropped(metrics) == 0
            assert queued(metrics) == 0


def test_a_full_queue_drops_the_oldest_and_counts_them(alertmanager_url: str) -> None:
    alertname, metrics = unique_alertname(), AgentMetrics()
    sink = AlertmanagerSink(
        alertmanager_url, label_fields=("host",), alertname=alertname, cooldown_seconds=COOLDOWN_S,
        queue_size=5, metrics=metrics,
    )  # fmt: skip
    now = datetime.now(UTC)
    pattern_id = uuid.uuid4().hex
    # Not started yet, so nothing drains: 8 submitted into room for 5.
    sink.submit([alert_doc(now, pattern_id=pattern_id, offset=i) for i in range(3)])
    sink.submit([alert_doc(now, pattern_id=pattern_id, offset=i) for i in range(3, 8)])
    assert dropped(metrics) == 3
    assert queued(metrics) == 5
    with running(sink):
        wait_for(lambda: len(get_alerts(alertmanager_url, alertname)) == 5, "the queued alerts")
    hosts = sorted(a["labels"]["host"] for a in get_alerts(alertmanager_url, alertname))
    assert hosts == [f"node-{i}" for i in range(3, 8)]  # the newest five
    assert dropped(metrics) == 3
    assert posts(metrics, "success") == 1


def test_one_call_larger_than_the_queue_keeps_its_newest(alertmanager_url: str) -> None:
    metrics = AgentMetrics()
    sink = AlertmanagerSink(
        alertmanager_url, label_fields=(), cooldown_seconds=COOLDOWN_S, queue_size=2, metrics=metrics
    )
    sink.submit([alert_doc(datetime.now(UTC), pattern_id=uuid.uuid4().hex, offset=i) for i in range(5)])
    assert dropped(metrics) == 3
    assert queued(metrics) == 2
    sink.close(0)  # never started: what is queued is counted as dropped
    assert dropped(metrics) == 5
    assert queued(metrics) == 0
    sink.submit([alert_doc(datetime.now(UTC), pattern_id=uuid.uuid4().hex)])  # after close: dropped
    assert dropped(metrics) == 6


def test_retries_end_after_max_retry_s_and_the_batch_is_dropped() -> None:
    metrics = AgentMetrics()
    sink = AlertmanagerSink(
        f"http://127.0.0.1:{free_port()}", label_fields=(), cooldown_seconds=COOLDOWN_S,
        max_retry_s=1.0, metrics=metrics,
    )  # fmt: skip
    with running(sink):
        sink.submit([alert_doc(datetime.now(UTC), pattern_id=uuid.uuid4().hex, offset=i) for i in range(4)])
        # Backoff 0.5 s, then 1 s would pass the 1 s budget: two attempts, then the batch is dropped.
        wait_for(lambda: dropped(metrics) == 4, "the batch to be given up")
        assert posts(metrics, "failure") == 2
        assert queued(metrics) == 0


def test_a_rejected_batch_is_dropped_without_retry(alertmanager_url: str) -> None:
    """A 4xx (here 404: a wrong path prefix in the URL, a real misconfiguration) cannot succeed
    on a retry: one POST, the batch dropped and counted, and the next batch is tried again."""
    metrics = AgentMetrics()
    sink = AlertmanagerSink(
        alertmanager_url + "/wrong-prefix", label_fields=(), cooldown_seconds=COOLDOWN_S, metrics=metrics
    )
    with running(sink):
        sink.submit([alert_doc(datetime.now(UTC), pattern_id=uuid.uuid4().hex, offset=i) for i in range(3)])
        wait_for(lambda: dropped(metrics) == 3, "the rejected batch to be dropped")
        sink.submit([alert_doc(datetime.now(UTC), pattern_id=uuid.uuid4().hex)])
        wait_for(lambda: dropped(metrics) == 4, "the next batch to be tried and dropped")
    assert posts(metrics, "failure") == 2
    assert posts(metrics, "success") == 0


@contextmanager
def hung_server() -> Iterator[tuple[str, threading.Event]]:
    """A TCP server that accepts connections and never answers (a wedged proxy or host); yields
    its URL and an event set once the first connection was accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = threading.Event()
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing
            accepted.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_submit_does_not_block_while_the_server_hangs() -> None:
    """Behaviour, not speed: with the delivery thread stuck in a POST that never gets an answer,
    ``submit`` still returns at once, and ``close`` gives up after its time-out."""
    metrics = AgentMetrics()
    with hung_server() as (url, accepted):
        sink = AlertmanagerSink(
            url, label_fields=(), cooldown_seconds=COOLDOWN_S, timeout_s=30.0, metrics=metrics
        )
        sink.start()
        now = datetime.now(UTC)
        sink.submit([alert_doc(now, pattern_id=uuid.uuid4().hex)])
        assert accepted.wait(10), "the sink never connected"
        slowest = 0.0
        for round_ in range(20):
            batch = [alert_doc(now, pattern_id=uuid.uuid4().hex, offset=round_ * 50 + i) for i in range(50)]
            started = time.monotonic()
            sink.submit(batch)
            slowest = max(slowest, time.monotonic() - started)
        # A submit that waited for the delivery thread would wait out the hung POST (30 s).
        assert slowest < 10.0, f"submit blocked for {slowest:.2f}s"
        assert queued(metrics) == 1 + 20 * 50
        assert posts(metrics, "success") == 0

        started = time.monotonic()
        sink.close(1.0)
        took = time.monotonic() - started
        assert took < 10.0, f"close(1.0) took {took:.2f}s, as if it waited for the hung POST (30 s)"
        assert dropped(metrics) == 1 + 20 * 50
        assert queued(metrics) == 0


@pytest.mark.slow
def test_the_agent_posts_its_committed_alerts_to_alertmanager(
    alertmanager_url: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    agent_bundle: Path,
) -> None:
    """End to end: events on Kafka → the agent (grouping on) → the alert topic and Alertmanager,
    one Alertmanager alert per pattern with the configured event field as a label."""
    from agent_helpers import AgentTopics, pipeline_settings, produce, read_committed

    from agent.pipeline import Pipeline, load_model

    topics = AgentTopics(make_topic(1), make_topic(1), make_topic(1), make_group())
    texts = [f"WINNER!! You have won a {n} pound prize. Call 0906{n}77 to claim" for n in range(100, 106)]
    records = [(None, json.dumps({"text": t, "service": "sms-gw"}).encode(), None) for t in texts]
    produce(kafka_bootstrap, topics.input, records)
    alertname = unique_alertname()
    settings = pipeline_settings(
        kafka_bootstrap, topics, agent_bundle, instance_id="am-agent", batch_size=32,
        alerts={"group_by": "pattern"},
        alertmanager={"url": alertmanager_url, "alertname": alertname, "label_fields": ["service"]},
    )  # fmt: skip
    metrics = AgentMetrics(batch_max_size=32)
    with Pipeline(settings, load_model(agent_bundle, intra_op_threads=1), metrics=metrics) as pipeline:
        pipeline.run(max_messages=len(records), idle_timeout_s=60)
        wait_for(lambda: len(get_alerts(alertmanager_url, alertname)) == 1, "the alert in Alertmanager")
    on_kafka = [json.loads(m.value() or b"") for m in read_committed(kafka_bootstrap, topics.alerts)]
    assert [d["kind"] for d in on_kafka] == ["alert"], "six events of one pattern: one alert"
    (posted,) = get_alerts(alertmanager_url, alertname)
    assert posted["labels"]["pattern_id"] == on_kafka[0]["pattern"]["id"]
    assert posted["labels"]["service"] == "sms-gw" and posted["labels"]["detector"] == "knn"
    assert posted["annotations"]["alert_id"] == on_kafka[0]["id"]
    assert sample(metrics, "anomaly_agent_alertmanager_posts_total", result="success") >= 1
    assert sample(metrics, "anomaly_agent_alertmanager_alerts_dropped_total") == 0
