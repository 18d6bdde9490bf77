"""``train --feedback-from FILE``: operators' ``normal`` verdicts folded into the next bundle.

A pattern an operator marked normal (``anomaly-agent feedback --normal``) is muted for the model
that alerted on it. The next model should not need the mute: its training data gets the pattern's
template as one more normal record, so it scores the pattern normal by itself.

``FILE`` is a dump of the feedback topic, one record value per line — what
``kcat -C -t anomaly-feedback -e -q`` or ``kafka-console-consumer.sh --from-beginning`` prints.
The latest verdict of each pattern wins (file order = topic order). A ``normal`` verdict carries
its pattern's text only when the writer gave it (``anomaly-agent feedback --template``, which a
subscriber copies from the alert's ``pattern.template``); verdicts without one cannot be folded
and are counted, as are lines that are not verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.alerts.feedback import FeedbackError, Verdict, parse_feedback
from training.records import InputError


@dataclass(frozen=True)
class Folded:
    """What a feedback dump gives the next bundle."""

    templates: list[str]  # the normal patterns' templates, each once, in dump order
    normal_without_template: int
    invalid_lines: int


def normal_templates(path: Path) -> Folded:
    """The templates of the patterns whose latest verdict in ``path`` is ``normal``."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise InputError(f"--feedback-from {path}: {exc.strerror or exc}") from None
    latest: dict[str, tuple[Verdict, str]] = {}
    invalid = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            feedback = parse_feedback(line.strip())
        except FeedbackError:
            invalid += 1
            continue
        if feedback is not None:
            latest[feedback.pattern_id] = (feedback.verdict, feedback.template)
    normal = [template for verdict, template in latest.values() if verdict is Verdict.NORMAL]
    templates = list(dict.fromkeys(t for t in normal if t))
    return Folded(templates, sum(1 for t in normal if not t), invalid)
