"""train / score / evaluate through the real CLI on 300 real BGL lines with the real ONNX embedder."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.alerts.feedback import feedback_record
from agent.cli import build_parser, main
from agent.model.bundle import load_bundle
from agent.model.examples import DEFAULT_MAX_EXAMPLES, EXAMPLE_MAX_CHARS, rank_patterns
from exporters.alerts import pattern_id
from training.records import InputError, prepared_texts, read_records

N_LINES = 300


def run_cli(*argv: str | Path) -> tuple[int, str, str]:
    """Run ``anomaly-agent ARGV`` in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_readers_keep_line_numbers_across_formats(tmp_path: Path) -> None:
    multi = tmp_path / "m.csv"
    multi.write_text('alert,text\n-,"two\nlines"\n\nX,second\n', encoding="utf-8")
    assert [(r.line, r.data) for r in read_records(multi)] == [
        (2, {"alert": "-", "text": "two\nlines"}),
        (5, {"alert": "X", "text": "second"}),
    ]
    array = tmp_path / "a.json"
    array.write_text('[{"text": "a"}, {"text": "b"}]', encoding="utf-8")
    assert [(r.line, r.data["text"]) for r in read_records(array)] == [(1, "a"), (2, "b")]
    log = tmp_path / "x.log"
    log.write_text("\ufeff- first  line\n\nKERNDTLB   second\n", encoding="utf-8")
    assert [(r.line, r.data) for r in read_records(log, label_field="1")] == [
        (1, {"text": "first  line", "1": "-"}),
        (3, {"text": "second", "1": "KERNDTLB"}),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"text": "a"}\nnot json\n', "bad.jsonl line 2: not valid JSON"),
        ("list.jsonl", b'{"text": "a"}\n[1, 2]\n', "list.jsonl line 2: expected a JSON object, got list"),
        ("bin.log", b"fine\nx\xff\n", "bin.log line 2: not UTF-8 text"),
        ("wide.csv", b"a,text\n1,2,3\n", "wide.csv line 2: 3 values but the header has 2 columns"),
        ("blank.log", b"\n  \n", "holds no records"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_records(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> dict[str, Any]:
    """The first 300 BGL lines as plain text, as JSONL (nested text, label field) and as CSV."""
    d = tmp_path_factory.mktemp("bgl")
    lines = (datasets_dir / "bgl_2k" / "BGL_2k.log").read_text(encoding="utf-8").splitlines()[:N_LINES]
    labels = [line.split(" ", 1)[0] for line in lines]
    bodies = [line.split(" ", 1)[1] for line in lines]
    (d / "bgl.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with (d / "bgl.jsonl").open("w", encoding="utf-8") as fh:
        for label, body in zip(labels, bodies, strict=True):
            fh.write(json.dumps({"event": {"message": body}, "alert": label}) + "\n")
    with (d / "bgl.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["alert", "message"])
        writer.writerows(zip(labels, bodies, strict=True))
    return {"dir": d, "labels": labels, "bodies": bodies}


@pytest.fixture(scope="module")
def trained(data: dict[str, Any], embedder_dir: Path) -> dict[str, Any]:
    out = data["dir"] / "bundle"
    code, stdout, stderr = run_cli(
        "train",
        "--input", data["dir"] / "bgl.log",
        "--label-field", "1",
        "--normal-labels", "-",
        "--detector", "knn",
        "--embedder", embedder_dir,
        "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    return {"bundle": out, "summary": json.loads(stdout), "stderr": stderr}


@pytest.mark.slow
def test_train_writes_a_verified_bundle_and_a_json_summary(
    trained: dict[str, Any], data: dict[str, Any]
) -> None:
    summary = trained["summary"]
    n_normal = data["labels"].count("-")
    assert 0 < n_normal < N_LINES
    training = summary["training"]
    assert training["records"] == N_LINES
    assert training["normal_records"] == n_normal
    assert training["anomalous_records"] == N_LINES - n_normal
    assert training["fit_records"] + training["validation_records"] == n_normal
    assert training["validation_records"] == round(0.2 * n_normal)
    assert training["label_counts"] == {label: data["labels"].count(label) for label in set(data["labels"])}
    assert training["normal_labels"] == ["-"]
    evaluation = summary["evaluation"]
    assert evaluation["target_fpr"] == 0.01
    assert 0.0 <= evaluation["validation_fpr"] <= 1.0
    assert evaluation["anomalies"]["counts"]["anomalous"] == N_LINES - n_normal
    assert "embedding" in trained["stderr"]  # progress bar on stderr, stdout held only the JSON

    bundle = load_bundle(trained["bundle"])
    assert bundle.model_id == summary["model_id"]
    assert bundle.detector_name == "knn"
    assert bundle.text_prep.fields == ("text",)
    assert bundle.manifest["training"] == training
    assert bundle.manifest["evaluation"] == evaluation
    sample = bundle.training_sample()
    assert sample is not None
    assert sample.shape == (training["training_sample"], bundle.manifest["embedder"]["dim"])
    np.testing.assert_allclose(np.linalg.norm(sample, axis=1), 1.0, atol=1e-4)


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_score_keeps_input_order_and_agrees_across_formats(
    trained: dict[str, Any], data: dict[str, Any]
) -> None:
    bundle = trained["bundle"]
    code, stdout, stderr = run_cli(
        "score", "--bundle", bundle, "--input", data["dir"] / "bgl.log", "--label-field", "1"
    )
    assert code == 0, stderr
    rows = _jsonl(stdout)
    assert [r["line"] for r in rows] == list(range(1, N_LINES + 1))
    assert [r["label"] for r in rows] == data["labels"]
    for row in rows:
        assert row["is_anomaly"] == (row["score"] > 1.0)
        assert row["cluster_label"] in (None, "-")
        assert row["threshold"] is None or row["distance"] / row["threshold"] == pytest.approx(
            row["pattern_score"]
        )
        finding = row["value"]
        assert finding is None or (row["is_anomaly"] and set(finding) >= {"slot", "value", "expected"})
    # Each row's score is its own record's: recompute a few directly with the bundle's parts.
    loaded = load_bundle(bundle)
    assert loaded.values is not None, "train fits the value view by default"
    picks = [0, data["labels"].index("KERNDTLB"), N_LINES - 1]
    picked = [rows[i]["text"] for i in picks]
    direct = loaded.detector.score(loaded.load_embedder().embed(picked), picked)
    np.testing.assert_allclose([rows[i]["pattern_score"] for i in picks], direct.score, rtol=1e-5)
    assert len({rows[i]["pattern_score"] for i in picks}) == len(picks)
    # ... and its event score is the pattern's fused with the record's own values, as the agent's.
    raw = [data["bodies"][i] for i in picks]
    for i, text, pattern_score in zip(picks, raw, direct.score.tolist(), strict=True):
        prepared, values = loaded.text_prep.prepare_values(text)
        assert prepared == rows[i]["text"]
        expected = loaded.values.bind(prepared, pattern_score).score(values.values)
        assert rows[i]["score"] == pytest.approx(expected, rel=1e-5)
    assert not rows[0]["text"].startswith("- ")  # the label column never reaches the model
    assert rows[0]["text"].startswith("<NUM> <TS> <NODE> <TS> <NODE> RAS KERNEL")

    code, stdout, _ = run_cli(
        "score", "--bundle", bundle, "--input", data["dir"] / "bgl.jsonl", "--text-field", "event.message"
    )
    assert code == 0
    from_jsonl = _jsonl(stdout)
    assert [r["text"] for r in from_jsonl] == [r["text"] for r in rows]
    np.testing.assert_allclose([r["score"] for r in from_jsonl], [r["score"] for r in rows], rtol=1e-5)


@pytest.mark.slow
def test_evaluate_counts_match_scores_and_the_report_is_written(
    trained: dict[str, Any], data: dict[str, Any]
) -> None:
    bundle, report = trained["bundle"], data["dir"] / "report"
    code, stdout, stderr = run_cli(
        "evaluate",
        "--bundle", bundle,
        "--input", data["dir"] / "bgl.log",
        "--label-field", "1",
        "--normal-labels", "-",
        "--report", report,
    )  # fmt: skip
    assert code == 0, stderr
    result = json.loads(stdout)
    counts = result["counts"]
    anomalous = [label != "-" for label in data["labels"]]
    assert counts["n"] == N_LINES
    assert counts["anomalous"] == sum(anomalous)
    assert counts["normal"] == N_LINES - sum(anomalous)
    assert counts["flagged"] > 0
    assert counts["tp"] + counts["fn"] == counts["anomalous"]
    assert counts["fp"] + counts["tn"] == counts["normal"]

    _, scored, _ = run_cli(
        "score", "--bundle", bundle, "--input", data["dir"] / "bgl.log", "--label-field", "1"
    )
    flags = [r["is_anomaly"] for r in _jsonl(scored)]
    assert counts["flagged"] == sum(flags)
    assert counts["tp"] == sum(f and a for f, a in zip(flags, anomalous, strict=True))
    assert result["recall"] == pytest.approx(counts["tp"] / counts["anomalous"])
    assert 0.0 <= result["auroc"] <= 1.0
    assert result["per_label"]["KERNDTLB"]["n"] == data["labels"].count("KERNDTLB")

    pngs = ["projection.png", "score_histogram.png", "outliers_vs_threshold.png", "roc.png", "pr.png"]
    for name in pngs:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    index = (report / "index.html").read_text(encoding="utf-8")
    assert all(f'src="{name}"' in index for name in pngs)
    assert result["report"] == str(report / "index.html")
    saved = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert saved == {k: v for k, v in result.items() if k != "report"}

    code, csv_out, stderr = run_cli(
        "evaluate",
        "--bundle", bundle,
        "--input", data["dir"] / "bgl.csv",
        "--text-field", "message",
        "--label-field", "alert",
        "--normal-labels", "-",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(csv_out)["counts"] == counts


def _error(*argv: str | Path) -> str:
    code, stdout, stderr = run_cli(*argv)
    assert code == 2, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("anomaly-agent: ")
    return lines[0]


@pytest.mark.slow
def test_input_errors_are_one_line_with_exit_2(
    trained: dict[str, Any], data: dict[str, Any], embedder_dir: Path, tmp_path: Path
) -> None:
    bundle = trained["bundle"]
    missing = tmp_path / "nope.jsonl"
    assert f"input file {missing} does not exist" in _error("score", "--bundle", bundle, "--input", missing)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert "holds no records" in _error("score", "--bundle", bundle, "--input", empty)

    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"text": "fine"}\n\n{"msg": "x", "level": "INFO"}\n', encoding="utf-8")
    message = _error("train", "--input", no_text, "--embedder", embedder_dir, "--out", tmp_path / "b")
    assert f"{no_text} line 3: text field 'text' is missing (fields present: level, msg)" in message

    message = _error(
        "evaluate", "--bundle", bundle, "--input", data["dir"] / "bgl.jsonl",
        "--text-field", "event.message", "--label-field", "severity", "--normal-labels", "-",
    )  # fmt: skip
    assert "line 1: label field 'severity' is missing (fields present: alert, event)" in message

    message = _error(
        "train", "--input", data["dir"] / "bgl.jsonl", "--text-field", "event.message",
        "--label-field", "alert", "--normal-labels=-,INFO",
        "--embedder", embedder_dir, "--out", tmp_path / "b",
    )  # fmt: skip
    assert "--normal-labels 'INFO' never occurs in label field 'alert'; labels found: '-' (" in message
    assert "'KERNDTLB' (" in message

    message = _error(
        "score", "--bundle", bundle, "--input", data["dir"] / "bgl.log", "--label-field", "alert"
    )
    assert "--label-field must be a column number" in message
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_tampered_bundle_is_refused_by_score(
    trained: dict[str, Any], data: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in trained["bundle"].rglob("*"):
        target = copy / f.relative_to(trained["bundle"])
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    sample = copy / "training_sample.npy"
    raw = bytearray(sample.read_bytes())
    raw[-1] ^= 0xFF
    sample.write_bytes(bytes(raw))
    message = _error("score", "--bundle", copy, "--input", data["dir"] / "bgl.log")
    assert "training_sample.npy does not match its sha256" in message
    assert message.endswith("re-train or restore the bundle")


@pytest.mark.slow
def test_class_centroid_without_labels_is_a_usage_error(
    data: dict[str, Any], embedder_dir: Path, tmp_path: Path
) -> None:
    message = _error(
        "train", "--input", data["dir"] / "bgl.jsonl", "--text-field", "event.message",
        "--detector", "class-centroid", "--embedder", embedder_dir, "--out", tmp_path / "b",
    )  # fmt: skip
    assert "--detector class-centroid needs the normal class of every training record" in message
    assert "--label-field" in message
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_score_with_and_without_the_pattern_table_agree(
    trained: dict[str, Any], data: dict[str, Any]
) -> None:
    """The table (the default) scores each distinct prepared text once; --no-patterns scores every
    record on its own row. Same lines, texts, decisions and clusters; the floats agree within
    the rounding of batch composition."""
    bundle = trained["bundle"]
    code, with_table, stderr = run_cli("score", "--bundle", bundle, "--input", data["dir"] / "bgl.log")
    assert code == 0, stderr
    code, without, stderr = run_cli(
        "score", "--bundle", bundle, "--input", data["dir"] / "bgl.log", "--no-patterns"
    )
    assert code == 0, stderr
    table_rows, plain_rows = _jsonl(with_table), _jsonl(without)
    assert len({r["text"] for r in table_rows}) < len(table_rows) / 2, "the data repeats patterns"
    for key in ("line", "text", "is_anomaly", "cluster", "cluster_label", "value"):
        assert [r[key] for r in table_rows] == [r[key] for r in plain_rows], key
    for key in ("score", "pattern_score", "distance"):
        np.testing.assert_allclose(
            [r[key] for r in table_rows], [r[key] for r in plain_rows], rtol=1e-5, atol=1e-6, err_msg=key
        )


def _prepared(bundle_dir: Path, log: Path) -> tuple[list[str], list[str]]:
    """The prepared texts of the normal and of the anomalous lines of ``log``, as training saw them."""
    records = read_records(log, label_field="1")
    texts = prepared_texts(records, load_bundle(bundle_dir).text_prep, log)
    labels = [r.data["1"] for r in records]
    normal = [t for t, label in zip(texts, labels, strict=True) if label == "-"]
    anomalous = [t for t, label in zip(texts, labels, strict=True) if label != "-"]
    return normal, anomalous


@pytest.mark.slow
def test_train_keeps_the_training_patterns(trained: dict[str, Any], data: dict[str, Any]) -> None:
    bundle = load_bundle(trained["bundle"])
    normal, anomalous = _prepared(trained["bundle"], data["dir"] / "bgl.log")
    distinct = len(set(normal))
    assert 1 < distinct < len(normal)  # the data repeats patterns
    assert trained["summary"]["training"]["patterns"] == {
        "distinct": distinct,
        "known": distinct,
        "examples": distinct,
        "max_examples": DEFAULT_MAX_EXAMPLES,
    }
    assert bundle.manifest["training"]["patterns"] == trained["summary"]["training"]["patterns"]
    for name in ("known_patterns.npy", "examples.npy", "examples.jsonl"):
        assert name in bundle.manifest["files"]

    known = bundle.known_patterns
    assert known is not None and len(known) == distinct
    assert all(text in known for text in normal)
    only_anomalous = set(anomalous) - set(normal)
    assert only_anomalous, "the fixture has alert lines whose pattern never occurs among normal lines"
    assert not any(text in known for text in only_anomalous)  # anomalous-labelled lines are not "known"

    examples = bundle.examples
    assert examples is not None
    ranked, _ = rank_patterns(normal)
    assert examples.texts == tuple(t[:EXAMPLE_MAX_CHARS] for t in ranked)  # all of them, most frequent first
    assert examples.dim == bundle.manifest["embedder"]["dim"]
    # The stored vectors are the agent's own: the bundle's embedder on the prepared text.
    embedder = bundle.load_embedder(intra_op_threads=1)
    probe = embedder.embed(ranked[:3] + ranked[-2:])
    np.testing.assert_allclose(examples.vectors[[0, 1, 2, -2, -1]].astype(np.float32), probe, atol=1e-3)
    for text, neighbours in zip(ranked[:3] + ranked[-2:], examples.nearest(probe, k=3), strict=True):
        assert len(neighbours) == 3
        assert neighbours[0].text == text
        assert neighbours[0].similarity == pytest.approx(1.0, abs=2e-3)
        assert neighbours[1].similarity <= neighbours[0].similarity
    jsonl = (trained["bundle"] / "examples.jsonl").read_text(encoding="utf-8")
    assert json.dumps(ranked[0]) in jsonl.splitlines()  # the control for the --no-examples test


@pytest.mark.slow
def test_no_examples_keeps_no_training_text_and_max_examples_bounds(
    trained: dict[str, Any], data: dict[str, Any], embedder_dir: Path, tmp_path: Path
) -> None:
    log = data["dir"] / "bgl.log"
    common = ("--input", log, "--label-field", "1", "--normal-labels=-", "--embedder", embedder_dir)
    out = tmp_path / "private"
    code, stdout, stderr = run_cli("train", *common, "--no-examples", "--out", out)
    assert code == 0, stderr
    normal, anomalous = _prepared(out, log)
    distinct = len(set(normal))
    assert json.loads(stdout)["training"]["patterns"] == {
        "distinct": distinct,
        "known": distinct,
        "examples": 0,
        "max_examples": None,
    }
    assert not (out / "examples.npy").exists() and not (out / "examples.jsonl").exists()
    bundle = load_bundle(out)
    assert bundle.examples is None
    assert bundle.known_patterns is not None and all(text in bundle.known_patterns for text in normal)
    # The value view is fitted without category tests: it keeps no training value as text.
    assert bundle.values is not None and len(bundle.values.arrays()["category_values"]) == 0
    assert json.loads(stdout)["training"]["value_view"]["category_tests"] is False
    # No training text anywhere in the bundle, prepared or raw, plain or JSON-escaped.
    needles = {t for t in normal + anomalous + data["bodies"] if len(t) >= 20}
    needles |= {json.dumps(t)[1:-1] for t in needles}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.relative_to(out).as_posix() for p in files} >= {"known_patterns.npy", "manifest.json"}
    for path in files:
        content = path.read_bytes()
        leaked = [t for t in needles if t.encode("utf-8") in content]
        assert not leaked, f"{path.relative_to(out)} holds training text: {leaked[:1]}"

    out = tmp_path / "three"
    code, stdout, stderr = run_cli("train", *common, "--max-examples", "3", "--out", out)
    assert code == 0, stderr
    patterns = json.loads(stdout)["training"]["patterns"]
    assert patterns == {"distinct": distinct, "known": distinct, "examples": 3, "max_examples": 3}
    bundle = load_bundle(out)
    ranked, _ = rank_patterns(normal)
    assert bundle.examples is not None and bundle.examples.texts == tuple(ranked[:3])
    assert bundle.known_patterns is not None and len(bundle.known_patterns) == distinct  # hashes: all

    message = _error("train", *common, "--max-examples", "0", "--out", tmp_path / "none")
    assert "--max-examples must be at least 1, got 0 (to keep none: --no-examples)" in message
    assert not (tmp_path / "none").exists()


def test_train_example_flags_defaults() -> None:
    args = build_parser().parse_args(["train", "--input", "x.log", "--out", "b"])
    assert args.examples is True
    assert args.max_examples == DEFAULT_MAX_EXAMPLES
    args = build_parser().parse_args(["train", "--input", "x.log", "--out", "b", "--no-examples"])
    assert args.examples is False


def _score(bundle_dir: Path, text: str) -> float:
    bundle = load_bundle(bundle_dir)
    prepared = [bundle.text_prep.prepare(text)]
    vectors = bundle.load_embedder(intra_op_threads=1).embed(prepared)
    return float(bundle.detector.score(vectors, prepared).score[0])


@pytest.mark.slow
def test_feedback_from_folds_normal_verdicts_into_the_next_bundle(
    trained: dict[str, Any], data: dict[str, Any], embedder_dir: Path, tmp_path: Path
) -> None:
    """A pattern operators marked normal (with its template) is normal training data for the next
    bundle; the latest verdict of a pattern wins; what cannot be folded is counted."""
    spam = "WINNER!! You have been selected to receive a 900 pound prize. Call 0906123 to claim, code 77"
    other = "URGENT! Your mobile number 1234 was awarded a 2000 GBP bonus caller prize, call 0906111 now"
    old = load_bundle(trained["bundle"])
    assert _score(trained["bundle"], spam) > 1.0 and _score(trained["bundle"], other) > 1.0

    def verdict(text: str, value: str, *, template: bool = True) -> bytes:
        prepared = old.text_prep.prepare(text)
        _, record = feedback_record(
            pattern_id(old.model_id, prepared),
            value,
            "oncall",
            "known",
            template=prepared if template else "",
        )
        return record

    dump = tmp_path / "feedback.jsonl"
    dump.write_bytes(
        b"\n".join(
            [
                verdict(spam, "normal"),
                verdict(other, "normal"),
                verdict(other, "anomaly"),  # un-marked later: the latest verdict wins, not folded
                verdict("kernel panic 42", "normal", template=False),  # nothing to fold
                b"{not a verdict",
            ]
        )
        + b"\n"
    )
    log = data["dir"] / "bgl.log"
    out = tmp_path / "next"
    code, stdout, stderr = run_cli(
        "train", "--input", log, "--label-field", "1", "--normal-labels=-", "--embedder", embedder_dir,
        "--feedback-from", dump, "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["training"]["feedback"] == {
        "file": "feedback.jsonl",
        "normal_patterns_folded": 1,
        "normal_without_template": 1,
        "invalid_lines": 1,
    }
    new = load_bundle(out)
    assert new.normal_patterns is not None and len(new.normal_patterns) == 1
    assert old.text_prep.prepare(spam) in new.normal_patterns, "the agent does not alert it"
    assert old.text_prep.prepare(other) not in new.normal_patterns, "un-marked: alerts as before"
    assert new.known_patterns is not None and old.text_prep.prepare(spam) in new.known_patterns
    assert _score(out, spam) < _score(trained["bundle"], spam), "trained as normal: it scores lower"
