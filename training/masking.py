"""Whether ``train`` masks variable tokens: a rule read off the training texts, stated in the bundle.

Masking (agent.model.textprep) turns "same message, different numbers" into one pattern. That is
what log lines need — their numbers, ids and addresses are parameters of a few templates — and the
pattern table's speed rests on it. Alone, it also erases what a value *is*: a traversal
``../../etc/passwd`` and a benign ``/img/a.png`` are both ``<PATH>``, 30,000 ms and 12 ms both
``<NUM>``; on a set of HTTP parameter values masking blinded every detector (``payload-values``:
the fused detector before issue 19 reached 0.956 AUROC on raw text, 0.692 masked).

The rule keeps both views. With the value view (agent.model.values) beside the detector, masking
cannot blind it: the detector scores the masked pattern, the value view scores what each
placeholder replaced against the values its slot had in training, and one calibration fuses
them. So ``train`` masks whenever it fits the value view. Measured on the eight dev sets
(docs/detectors.md, "Masking"): masked text with the value view is within 0.001 AUROC of raw text
on emotion and CLINC150, far above it where values carry the anomaly (payloads +0.14, SMS spam's
numbers +0.11), and 0.010 below it on BGL, where masking is what the pattern table and the
false-positive rate need. Without the value view (``value_view=False``) the earlier rule stands:
mask when masking merges at least ``MERGE_SHARE`` (10 %) of the distinct training texts into
others (bimodal on the dev sets: 74-91 % on logs and payloads, under 1 % on prose) — a rule that
looks at how much masking merges, not at what it erases, and blinded the payload sets.
``--mask`` / ``--no-mask`` override either.

The decision records what it was read from: the distinct texts with and without masking, and how
many values masking replaced and how many of those the value view describes with their own
pattern's slots (the rest are scored by their placeholder's pooled slot).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from agent.model.textprep import TextPreparation
from agent.model.values import MIN_VALUES

MERGE_SHARE = 0.10


@dataclass(frozen=True)
class MaskDecision:
    """The masking choice and what it was read from (recorded in the training summary).

    ``values``: placeholder values in the training texts; ``values_in_described_patterns``: those
    in patterns seen at least ``MIN_VALUES`` times (the value view describes their own slots).
    """

    mask: bool
    rule: str
    distinct_unmasked: int
    distinct_masked: int
    values: int
    values_in_described_patterns: int

    @property
    def merged_share(self) -> float:
        """Share of the distinct unmasked texts that masking merges into another."""
        if self.distinct_unmasked == 0:
            return 0.0
        return 1.0 - self.distinct_masked / self.distinct_unmasked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"merged_share": round(self.merged_share, 4), "merge_share_rule": MERGE_SHARE}


def decide_mask(
    extracted: Sequence[str], base: TextPreparation, override: bool | None, *, value_view: bool = False
) -> MaskDecision:
    """Mask or not for these extracted (unprepared) training texts; ``override`` is --mask/--no-mask,
    ``value_view`` whether the value view is fitted beside the detector (see the module doc)."""
    unmasked = {replace(base, mask=False).prepare(t) for t in extracted}
    masking = replace(base, mask=True)
    masked = [masking.prepare_values(t) for t in extracted]
    patterns = Counter(text for text, _ in masked)
    values = sum(len(v.values or ()) for _, v in masked)
    described = sum(len(v.values or ()) for text, v in masked if patterns[text] >= MIN_VALUES)
    if override is not None:
        mask, rule = override, "--mask" if override else "--no-mask"
    elif value_view:
        mask, rule = True, "auto: mask, and the value view scores what masking replaced"
    else:
        mask = len(patterns) <= (1.0 - MERGE_SHARE) * len(unmasked)
        rule = f"auto without the value view: mask when it merges >= {MERGE_SHARE:.0%} of the distinct texts"
    return MaskDecision(
        mask=mask,
        rule=rule,
        distinct_unmasked=len(unmasked),
        distinct_masked=len(patterns),
        values=values,
        values_in_described_patterns=described,
    )
