"""train's masking rule: with the value view, mask (both views kept); without it, mask when masking
merges >= 10 % of the distinct training texts; --mask / --no-mask override either."""

from __future__ import annotations

from agent.model.textprep import TextPreparation
from agent.model.values import MIN_VALUES
from training.masking import MERGE_SHARE, decide_mask

LOG_LINES = [f"connection from 10.0.{i % 7}.{i} closed after {i * 3} ms" for i in range(200)]
PROSE = [
    f"i feel {w} today because of the {x}" for w in ("happy", "sad", "tired") for x in ("rain", "sun", "news")
]
PAYLOADS = [f"GET /download?file=/img/{w}-{i}.png" for w in ("cat", "dog") for i in range(60)]


def test_with_the_value_view_everything_is_masked_and_the_values_counted() -> None:
    for texts in (LOG_LINES, PROSE, PAYLOADS):
        decision = decide_mask(texts, TextPreparation(), None, value_view=True)
        assert decision.mask and decision.rule.startswith("auto: mask")
    logs = decide_mask(LOG_LINES, TextPreparation(), None, value_view=True)
    assert (logs.values, logs.values_in_described_patterns) == (400, 400)  # <IP> and <NUM>, one pattern
    prose = decide_mask(PROSE, TextPreparation(), None, value_view=True)
    assert prose.values == prose.values_in_described_patterns == 0
    few = decide_mask(LOG_LINES[: MIN_VALUES - 1], TextPreparation(), None, value_view=True)
    assert few.values == 2 * (MIN_VALUES - 1) and few.values_in_described_patterns == 0


def test_without_the_value_view_logs_are_masked_and_prose_is_not() -> None:
    logs = decide_mask(LOG_LINES, TextPreparation(), None)
    assert logs.mask and logs.distinct_unmasked == 200 and logs.distinct_masked == 1
    assert logs.merged_share >= MERGE_SHARE
    prose = decide_mask(PROSE, TextPreparation(), None)
    assert not prose.mask and prose.merged_share == 0.0
    assert prose.to_dict()["rule"].startswith("auto without the value view")


def test_the_cut_off_without_the_value_view_is_the_stated_share() -> None:
    """90 distinct words plus n texts that masking merges into one: 9 % merged is not enough."""
    words = [f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(90)]
    nine = decide_mask(words + [f"count {n}" for n in range(10)], TextPreparation(), None)
    assert (nine.distinct_unmasked, nine.distinct_masked, nine.mask) == (100, 91, False)
    eleven = decide_mask(words + [f"count {n}" for n in range(12)], TextPreparation(), None)
    assert (eleven.distinct_unmasked, eleven.distinct_masked, eleven.mask) == (102, 91, True)
    assert nine.merged_share < MERGE_SHARE <= eleven.merged_share


def test_overrides_win_and_are_recorded() -> None:
    for value_view in (False, True):
        forced = decide_mask(PROSE, TextPreparation(), True, value_view=value_view)
        assert forced.mask and forced.rule == "--mask"
        off = decide_mask(LOG_LINES, TextPreparation(), False, value_view=value_view)
        assert not off.mask and off.rule == "--no-mask"
