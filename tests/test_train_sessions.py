"""Sessions through the CLI (issue 18): ``train --session-key-pattern`` fits the session model on
the normal sessions of an HDFS slice (``hdfs_sessions`` with its ``anomaly_label.csv``) and stores
it; ``score --sessions`` writes one line per session exactly as the agent's tracker decides them;
``evaluate --sessions --session-labels`` gives the session figures. Real lines, the real embedder."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_cli_training import run_cli

from agent import cli
from agent.alerts.sessions import DEFAULT_MAX_OPEN, SessionTracker
from agent.model import sessions as session_defaults
from agent.model.bundle import load_bundle
from agent.model.examples import pattern_hash
from agent.model.sessions import SessionKey, SessionWindows
from training.evaluate import detection_metrics
from training.sessions import evaluate_sessions, read_session_labels

KEY = r"(blk_-?\d+)"
GAP_SECONDS = 3600.0
MAX_SECONDS = 172_800.0
NORMAL_BLOCKS = 16
ANOMALOUS_BLOCKS = 4
ISSUE_KEYS = {"session", "score", "is_anomaly", "events", "first_line", "last_line", "unexpected"}


@pytest.fixture(scope="module")
def hdfs(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> dict[str, Any]:
    """Every line (in time order) of the first 16 normal blocks of at most 20 lines and of the first
    4 anomalous blocks of the sample, as JSONL with the line's own time (ISO 8601)."""
    source = datasets_dir / "hdfs_sessions"
    labels = read_session_labels(source / "anomaly_label.csv")
    with gzip.open(source / "HDFS_sessions.log.gz", "rt", encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for _, line in zip(range(20_000), fh, strict=False)]
    key = re.compile(KEY)
    blocks: dict[str, list[str]] = {}
    for line in lines:
        found = key.search(line)
        assert found is not None
        blocks.setdefault(found.group(1), []).append(line)
    normal = [k for k, v in blocks.items() if not labels[k] and len(v) <= 20][:NORMAL_BLOCKS]
    anomalous = [k for k in blocks if labels[k]][:ANOMALOUS_BLOCKS]
    kept = set(normal) | set(anomalous)
    d = tmp_path_factory.mktemp("hdfs_sessions")
    records = []
    for line in lines:
        found = key.search(line)
        if found is not None and found.group(1) in kept:
            moment = datetime.strptime(line[:13], "%y%m%d %H%M%S").replace(tzinfo=UTC)
            records.append({"text": line, "time": moment.isoformat().replace("+00:00", "Z")})
    with (d / "hdfs.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    with (d / "labels.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["BlockId", "Label"])
        writer.writerows((k, "Anomaly" if labels[k] else "Normal") for k in sorted(blocks))
    return {"dir": d, "records": records, "normal": normal, "anomalous": anomalous, "labels": labels}


@pytest.fixture(scope="module")
def trained(hdfs: dict[str, Any], embedder_dir: Path) -> dict[str, Any]:
    out = hdfs["dir"] / "bundle"
    code, stdout, stderr = run_cli(
        "train", "--input", hdfs["dir"] / "hdfs.jsonl", "--embedder", embedder_dir, "--out", out,
        "--session-key-pattern", KEY, "--session-time-field", "time",
        "--session-gap-seconds", GAP_SECONDS, "--session-max-seconds", MAX_SECONDS,
        "--session-labels", hdfs["dir"] / "labels.csv",
    )  # fmt: skip
    assert code == 0, stderr
    return {"bundle": out, "summary": json.loads(stdout)}


def _score_sessions(bundle: Path, data: Path, *flags: str | Path) -> list[dict[str, Any]]:
    code, stdout, stderr = run_cli("score", "--bundle", bundle, "--input", data, "--sessions", *flags)
    assert code == 0, stderr
    return [json.loads(line) for line in stdout.splitlines()]


def test_the_cli_session_defaults_are_the_model_defaults() -> None:
    """agent/cli.py repeats them so that --help imports no model code."""
    windows = SessionWindows()
    assert (
        windows.gap_seconds,
        windows.max_seconds,
        windows.max_events,
    ) == (cli.SESSION_GAP_SECONDS, cli.SESSION_MAX_SECONDS, cli.SESSION_MAX_EVENTS)
    assert cli.SESSION_ORDER == session_defaults.DEFAULT_ORDER
    assert cli.SESSION_TARGET_FPR == session_defaults.DEFAULT_TARGET_FPR
    assert cli.SESSION_MAX_OPEN == DEFAULT_MAX_OPEN


@pytest.mark.slow
def test_train_fits_and_stores_the_session_model(trained: dict[str, Any], hdfs: dict[str, Any]) -> None:
    summary = trained["summary"]
    sessions, figures = summary["training"]["sessions"], summary["evaluation"]["sessions"]
    model = sessions["model"]
    assert model["windows"] == {"gap_seconds": GAP_SECONDS, "max_seconds": MAX_SECONDS, "max_events": 10_000}
    assert model["key"] == {"pattern": KEY, "field": None, "time_field": "time"}
    assert model["order"] == 2 and model["target_fpr"] == 0.002
    assert sessions["keys"] == NORMAL_BLOCKS + ANOMALOUS_BLOCKS
    assert sessions["anomalous_keys"] == ANOMALOUS_BLOCKS
    assert sessions["validation_keys"] == round(0.2 * NORMAL_BLOCKS)
    assert sessions["sessions"] > sessions["keys"], "a block's life is several sessions (gap 1 h)"
    assert sessions["fit_sessions"] == model["fit"]["sessions"] > 2
    assert sessions["labels"] == "labels.csv" and sessions["unlabelled_keys"] == 0
    # validation: the held-out normal keys and the anomalous ones, at the calibrated threshold
    assert figures["counts"]["anomalous"] == ANOMALOUS_BLOCKS
    assert figures["counts"]["normal"] == sessions["validation_keys"]
    assert figures["auroc"] is not None and figures["recall"] is not None
    assert set(figures) >= {"auroc", "average_precision", "precision", "recall", "f1", "decisive_share"}

    bundle = load_bundle(trained["bundle"])
    assert bundle.sessions is not None
    assert bundle.sessions.windows == SessionWindows(GAP_SECONDS, MAX_SECONDS)
    assert bundle.sessions.key == SessionKey(pattern=KEY, time_field="time")
    assert bundle.sessions.threshold == pytest.approx(model["threshold"], rel=1e-6)
    assert "sessions/session_model.json" in bundle.manifest["files"]
    assert bundle.manifest["training"]["sessions"] == sessions
    assert bundle.manifest["evaluation"]["sessions"] == figures


def _ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.slow
def test_score_sessions_is_what_the_agents_tracker_decides(
    trained: dict[str, Any], hdfs: dict[str, Any]
) -> None:
    rows = _score_sessions(trained["bundle"], hdfs["dir"] / "hdfs.jsonl")
    assert rows and all(set(r) >= ISSUE_KEYS for r in rows)
    assert len(rows) == trained["summary"]["training"]["sessions"]["sessions"]
    assert rows[-1]["reason"] == "end_of_input", "every session still open closes at the end of the input"
    assert all(r["is_anomaly"] == (r["score"] > 1.0) for r in rows)
    assert all(1 <= r["first_line"] <= r["last_line"] <= len(hdfs["records"]) for r in rows)

    # The agent: each record, in offset order, through the partition's SessionTracker with the
    # record's own timestamp and its prepared text's pattern, committed per batch (batch sizes at
    # random); at the end the tracker closes what is open. The same verdicts, in the same order.
    bundle = load_bundle(trained["bundle"])
    assert bundle.sessions is not None
    tracker = SessionTracker(bundle.sessions, "hdfs", 0)
    key = re.compile(KEY)
    rng = random.Random(7)
    closed = []
    records = hdfs["records"]
    start = 0
    while start < len(records):
        size = rng.randint(1, 50)
        for offset, record in enumerate(records[start : start + size], start=start + 1):
            prepared = bundle.text_prep.prepare(record["text"])
            found = key.search(record["text"])
            verdicts = tracker.event(
                None if found is None else found.group(1),
                pattern_hash(prepared),
                timestamp_ms=_ms(record["time"]),
                offset=offset,
                text=prepared,
            )
            closed += [v for v in verdicts if v.kind == "close"]
        tracker.commit()
        start += size
    closed += tracker.close_all()
    assert [
        (
            v.session,
            round(v.result.score, 6),
            v.result.is_anomaly,
            v.result.events,
            v.first_offset,
            v.last_offset,
        )
        for v in closed
    ] == [
        (r["session"], r["score"], r["is_anomaly"], r["events"], r["first_line"], r["last_line"])
        for r in rows
    ]
    assert [[u.to_dict(v.templates) for u in v.result.unexpected] for v in closed] == [
        r["unexpected"] for r in rows
    ]

    # An anomalous block is flagged; its unexpected steps name templates.
    flagged = {r["session"] for r in rows if r["is_anomaly"]}
    assert flagged & set(hdfs["anomalous"])
    assert all(r["unexpected"] for r in rows if r["is_anomaly"])
    # A key the bundle was not trained with is read only when asked for.
    assert (
        _score_sessions(
            trained["bundle"], hdfs["dir"] / "hdfs.jsonl", "--session-key-pattern", r"(nothing-\d+)"
        )
        == []
    )


@pytest.mark.slow
def test_evaluate_sessions_gives_the_session_figures(trained: dict[str, Any], hdfs: dict[str, Any]) -> None:
    labels_csv = hdfs["dir"] / "labels.csv"
    code, stdout, stderr = run_cli(
        "evaluate", "--bundle", trained["bundle"], "--input", hdfs["dir"] / "hdfs.jsonl",
        "--sessions", "--session-labels", labels_csv,
    )  # fmt: skip
    assert code == 0, stderr
    result = json.loads(stdout)
    assert (
        result["unit"] == "session"
        and result["sessions"] == trained["summary"]["training"]["sessions"]["sessions"]
    )
    counts = result["counts"]
    assert counts["n"] == NORMAL_BLOCKS + ANOMALOUS_BLOCKS and counts["anomalous"] == ANOMALOUS_BLOCKS
    assert counts["tp"] + counts["fn"] == ANOMALOUS_BLOCKS and counts["fp"] + counts["tn"] == NORMAL_BLOCKS
    assert result["unlabelled_keys"] == 0
    rows = _score_sessions(trained["bundle"], hdfs["dir"] / "hdfs.jsonl")
    labels = read_session_labels(labels_csv)
    expected = evaluate_sessions(rows, labels)
    assert {k: result[k] for k in expected} == expected
    # per block: flagged when any of its sessions is; the score is its highest session's
    best: dict[str, float] = {}
    for row in rows:
        best[row["session"]] = max(best.get(row["session"], 0.0), row["score"])
    keys = sorted(best)
    metrics = detection_metrics([best[k] for k in keys], [labels[k] for k in keys])
    assert counts == metrics["counts"] and result["auroc"] == metrics["auroc"]
    assert result["recall"] == counts["tp"] / ANOMALOUS_BLOCKS
    # Two of the four anomalous blocks were allocated and received once, then nothing: flagged. The
    # other two fail later than the slice reaches (their deletion), so nothing shows them yet.
    assert counts["tp"] >= 2 and counts["fp"] == 0


def _error(*argv: str | Path) -> str:
    code, stdout, stderr = run_cli(*argv)
    assert code == 2, stderr
    assert stdout == "" and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("anomaly-agent: "), stderr
    return lines[0]


@pytest.mark.slow
def test_session_flag_errors_are_one_line(
    trained: dict[str, Any], hdfs: dict[str, Any], embedder_dir: Path, tmp_path: Path
) -> None:
    data, labels = hdfs["dir"] / "hdfs.jsonl", hdfs["dir"] / "labels.csv"
    common = ("train", "--input", data, "--embedder", embedder_dir, "--out", tmp_path / "b")
    assert "needs --session-key-pattern or --session-key-field" in _error(*common, "--session-labels", labels)
    assert "exactly one group" in _error(*common, "--session-key-pattern", r"blk_-?\d+")
    assert "max_seconds must be >= gap_seconds" in _error(
        *common, "--session-key-pattern", KEY, "--session-gap-seconds", "100", "--session-max-seconds", "10"
    )
    assert not (tmp_path / "b").exists()
    message = _error("evaluate", "--bundle", trained["bundle"], "--input", data, "--sessions")
    assert "--sessions needs --session-labels" in message
    message = _error("evaluate", "--bundle", trained["bundle"], "--input", data)
    assert "needs --label-field and --normal-labels" in message
    plain = tmp_path / "plain"
    code, _, stderr = run_cli("train", "--input", data, "--embedder", embedder_dir, "--out", plain)
    assert code == 0, stderr
    assert load_bundle(plain).sessions is None
    assert "has no session model" in _error("score", "--bundle", plain, "--input", data, "--sessions")
