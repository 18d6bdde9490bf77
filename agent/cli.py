"""The ``anomaly-agent`` command line.

Subcommand names and flags are a contract (scripts, unit files and docs use them): extend, never
rename. Each subcommand's work lives in the module named for it and is imported only when that
subcommand runs, so ``anomaly-agent --help`` stays fast and the runtime never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from agent import __version__
from agent.config import EXIT_CONFIG, ConfigError, explain, load_settings, masked_dump
from agent.model.defaults import CALIBRATION_SPLITS, DEFAULT_CALIBRATION_SPLIT, DEFAULT_DETECTOR

# Session defaults (agent.model.sessions, agent.alerts.sessions), repeated here so that --help
# imports no model code; tests/test_train_sessions.py checks that they agree.
SESSION_GAP_SECONDS = 600.0
SESSION_MAX_SECONDS = 86_400.0
SESSION_MAX_EVENTS = 10_000
SESSION_MAX_OPEN = 100_000
SESSION_ORDER = 2
SESSION_TARGET_FPR = 0.002

# The demo walkthrough of a source checkout (``make demo``).
DEMO_WALKTHROUGH = Path(__file__).resolve().parent.parent / "deploy" / "demo" / "walkthrough.py"

# subcommand -> "module:function"; the function takes the parsed namespace and returns an exit code.
_HANDLERS: dict[str, str] = {
    "validate-config": "agent.cli:cmd_validate_config",
    "export-embedder": "training.export:cmd_export_embedder",
    "train": "training.train:cmd_train",
    "score": "training.score:cmd_score",
    "evaluate": "training.evaluate:cmd_evaluate",
    "run": "agent.runner:cmd_run",
    "demo": "agent.cli:cmd_demo",
    "feedback": "agent.alerts.feedback_cli:cmd_feedback",
}


def cmd_validate_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        print(f"anomaly-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if getattr(args, "explain", False):
        print(explain(settings))
    else:
        print(json.dumps(masked_dump(settings), indent=2, sort_keys=True))
    return 0


def load_demo() -> ModuleType:
    """The demo walkthrough (``deploy/demo/walkthrough.py``), loaded by path: it lives beside its
    data in a source checkout (it starts ``deploy/local/kafka.sh``), not in the runtime package.
    FileNotFoundError outside a checkout."""
    if not DEMO_WALKTHROUGH.is_file():
        raise FileNotFoundError(DEMO_WALKTHROUGH)
    spec = importlib.util.spec_from_file_location("anomaly_agent_demo", DEMO_WALKTHROUGH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def cmd_demo(args: argparse.Namespace) -> int:
    """``anomaly-agent demo``: run the walkthrough of the source checkout."""
    try:
        demo = load_demo()
    except FileNotFoundError:
        print(
            f"anomaly-agent: the demo runs from a source checkout ({DEMO_WALKTHROUGH} not found): "
            "clone the project and run 'make demo'",
            file=sys.stderr,
        )
        return 2
    handler: Callable[[argparse.Namespace], int] = demo.cmd_demo
    return handler(args)


def _add_input_args(p: argparse.ArgumentParser, text_field_default: str | None = "text") -> None:
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        help="JSONL (one object per line), CSV with a header, or plain text lines",
    )
    p.add_argument(
        "--text-field",
        default=text_field_default,
        help="JSON field (dotted path) or CSV column holding the text; ignored for plain text",
    )


def _add_session_key_args(p: argparse.ArgumentParser, *, training: bool) -> None:
    """The session key flags of train (which fits the model by them) and score/evaluate (which
    read sessions as training did unless told otherwise)."""
    stored = "" if training else " (default: the key the bundle's session model was trained with)"
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--session-key-pattern",
        default=None,
        metavar="REGEX",
        help="session key: a regex with one group, searched in the raw text before masking"
        f" (HDFS: '(blk_-?\\d+)'){stored}",
    )
    key.add_argument(
        "--session-key-field",
        default=None,
        metavar="FIELD",
        help=f"session key: a dotted event field such as trace_id{stored}",
    )
    p.add_argument(
        "--session-time-field",
        default=None,
        metavar="FIELD",
        help="field holding each record's event time (epoch milliseconds or ISO 8601), the time the"
        " records carry as Kafka timestamps; without it only the caps and the end of the input close"
        f" sessions{stored}",
    )
    p.add_argument(
        "--session-max-open",
        type=int,
        default=SESSION_MAX_OPEN,
        help="open sessions at most (the agent's [sessions] max_open per partition); beyond, the one"
        " nearest its deadline is closed early",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-agent",
        description="Real-time anomaly detection for text events on Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "validate-config", help="print the effective configuration (secrets masked) or say what is wrong"
    )
    p.add_argument("file", type=Path, nargs="?", help="TOML config file (environment variables override it)")
    p.add_argument(
        "--explain",
        action="store_true",
        help="print the effective settings as TOML, each key with what it does (secrets masked)",
    )

    p = sub.add_parser(
        "export-embedder", help="export a sentence-transformer to ONNX (needs the 'train' extra)"
    )
    p.add_argument(
        "--model", type=Path, default=None, help="model directory (default: the packaged all-MiniLM-L6-v2)"
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantization with per-channel weights")

    p = sub.add_parser("train", help="fit a detector on normal events and write a model bundle")
    _add_input_args(p)
    p.add_argument("--label-field", default=None, help="field/column holding a label")
    p.add_argument(
        "--normal-labels", default=None, help="comma-separated labels to train on (needs --label-field)"
    )
    p.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        help=f"detector to fit (default {DEFAULT_DETECTOR}; kmeans, knn, class-centroid, ...:"
        " docs/detectors.md, validated against the registry)",
    )
    p.add_argument(
        "--target-fpr", type=float, default=0.01, help="false-positive rate the threshold is calibrated to"
    )
    p.add_argument(
        "--embedder", type=Path, default=None, help="exported ONNX embedder directory (default: export once)"
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument(
        "--mask",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replace variable tokens (numbers, ids, IPs, timestamps, paths) with placeholders"
        " (default: always with the value view, which scores what they replaced; with"
        " --no-value-view, when that merges >= 10%% of the distinct training texts). --no-mask"
        " keeps raw text: nothing is hidden, so no value view is fitted",
    )
    p.add_argument(
        "--value-view",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit the value view beside the detector: what each placeholder replaced is scored per"
        " event against the values its slot had in training, under one calibration (default: on;"
        " docs/detectors.md)",
    )
    p.add_argument(
        "--calibration-split",
        choices=CALIBRATION_SPLITS,
        default=DEFAULT_CALIBRATION_SPLIT,
        help="which normal records calibrate the threshold and measure validation FPR: a seeded"
        " random share, or the last share of the input (input order = time)",
    )
    p.add_argument(
        "--max-chars", type=int, default=2048, help="truncate prepared texts to this many characters"
    )
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="share of normal records kept out of fitting to measure the false-positive rate (0: none)",
    )
    p.add_argument(
        "--examples",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the distinct training texts (nearest normal examples in alerts); --no-examples for"
        " data that must not be kept (the pattern hashes are kept either way)",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=50_000,
        help="at most this many distinct training texts kept as examples, most frequent first",
    )
    p.add_argument(
        "--time-field",
        default=None,
        help="field holding each record's event time (epoch s/ms or ISO 8601): learn every training"
        " pattern's rate baseline, so the agent's rate alerts need no warm-up for known patterns",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and the detector")
    _add_session_key_args(p, training=True)
    p.add_argument(
        "--session-labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="key,label CSV (loghub's BlockId,Label with Normal/Anomaly): anomalous sessions are left"
        " out of fitting and give the validation figures",
    )
    p.add_argument(
        "--session-gap-seconds",
        type=float,
        default=SESSION_GAP_SECONDS,
        help="event-time inactivity that closes a session",
    )
    p.add_argument(
        "--session-max-seconds",
        type=float,
        default=SESSION_MAX_SECONDS,
        help="a session closes this long after its first event",
    )
    p.add_argument(
        "--session-max-events",
        type=int,
        default=SESSION_MAX_EVENTS,
        help="a session closes at its this-many-th event",
    )
    p.add_argument(
        "--session-order",
        type=int,
        default=SESSION_ORDER,
        help="n-gram order of the next-pattern model (2: the previous pattern)",
    )
    p.add_argument(
        "--session-target-fpr",
        type=float,
        default=SESSION_TARGET_FPR,
        help="share of normal sessions the session threshold is calibrated to flag",
    )
    p.add_argument(
        "--feedback-from",
        type=Path,
        default=None,
        help="a dump of the feedback topic (one record value per line): patterns marked normal "
        "(with their template) are trained as normal",
    )

    p = sub.add_parser("score", help="score records with a bundle; JSONL to stdout in input order")
    p.add_argument("--bundle", type=Path, required=True)
    _add_input_args(p, text_field_default=None)
    p.add_argument(
        "--label-field",
        default=None,
        help="label field/column to copy into the output (plain text: a column number, cut from the text)",
    )
    p.add_argument(
        "--no-patterns",
        dest="patterns",
        action="store_false",
        help="score every record on its own instead of each distinct prepared text once (slow; a reference)",
    )
    p.add_argument(
        "--sessions",
        action="store_true",
        help="one JSON line per session (the bundle's session model, as the agent decides) instead of"
        " per record",
    )
    _add_session_key_args(p, training=False)

    p = sub.add_parser("evaluate", help="measure detection quality on labelled data and write a report")
    p.add_argument("--bundle", type=Path, required=True)
    _add_input_args(p, text_field_default=None)
    p.add_argument(
        "--label-field", default=None, help="field/column holding the labels (required without --sessions)"
    )
    p.add_argument(
        "--normal-labels",
        default=None,
        help="comma-separated labels that count as normal (required without --sessions)",
    )
    p.add_argument("--report", type=Path, default=None, help="directory for plots and report.json")
    p.add_argument(
        "--sessions",
        action="store_true",
        help="session-level figures of the bundle's session model (needs --session-labels)",
    )
    p.add_argument(
        "--session-labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="key,label CSV (BlockId,Label with Normal/Anomaly) for --sessions",
    )
    _add_session_key_args(p, training=False)

    p = sub.add_parser("run", help="run the agent: consume, embed, score, alert")
    p.add_argument(
        "--config", type=Path, default=None, help="TOML config file (environment variables override it)"
    )

    p = sub.add_parser(
        "feedback", help="mark a pattern normal (no more alerts) or anomaly (alerts again) for every agent"
    )
    p.add_argument("--pattern", required=True, help="the pattern id (an alert's pattern.id, 32 hex)")
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument(
        "--normal", dest="verdict", action="store_const", const="normal", help="stop alerting this pattern"
    )
    verdict.add_argument(
        "--anomaly", dest="verdict", action="store_const", const="anomaly", help="alert it again (un-mark)"
    )
    verdict.add_argument("--verdict", choices=("normal", "anomaly"), help="the same as --normal / --anomaly")
    p.add_argument(
        "--template",
        default="",
        help="the pattern's template (alert pattern.template), for train --feedback-from",
    )
    p.add_argument(
        "--scope",
        choices=("novelty", "rate"),
        default="novelty",
        help="what the verdict is about: the pattern's anomalous events (novelty, the default) or its"
        " rate (spike and silence alerts); each scope is muted and un-muted on its own",
    )
    p.add_argument("--by", required=True, help="who decides (kept with the verdict)")
    p.add_argument("--reason", default="", help="why (kept with the verdict)")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the agent's TOML config (environment variables override it)",
    )

    p = sub.add_parser("demo", help="local broker + trained bundle + agent + a replayed stream, end to end")
    p.add_argument(
        "--events", type=int, default=None, help="how many events to replay (default: the whole sample)"
    )
    p.add_argument(
        "--rate", type=float, default=25.0, help="events per second to replay (0: as fast as possible)"
    )
    p.add_argument(
        "--exit-after-replay",
        action="store_true",
        help="stop once the agent has processed every replayed event and its alerts were read (tests, CI)",
    )
    p.add_argument(
        "--state-dir", type=Path, default=None, help="broker state, bundle, logs (default: var/demo)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, func_name = _HANDLERS[args.command].split(":")
    handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module_name), func_name)
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
