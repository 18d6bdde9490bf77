"""Turning an event into the text the embedder sees — identically at training and at run time.

A model bundle stores its ``TextPreparation`` (``text_preparation.json``) and the agent applies the
very same object to every consumed event, so a detector never scores text prepared differently
from the text it was fitted on. Two steps:

``extract(record)``
    reads one or more fields (dotted paths into nested JSON, e.g. ``"payload.message"``) and joins
    them with a single space, in the configured order. A missing, null, non-scalar or empty field
    raises ``MissingTextError`` naming the field and the fields present, so bad input can be
    dead-lettered with a reason instead of being embedded as an empty string.
``prepare(text)``
    optionally masks variable tokens (numbers, hex ids, IPs, UUIDs, timestamps, paths, e-mail
    addresses, URLs, node/block ids) into stable placeholders such as ``<NUM>`` or ``<IP>``,
    collapses whitespace, and truncates to ``max_chars``. Masking keeps "same message, different
    numbers" close together in embedding space, which is what clustering normal log traffic needs.
``prepare_values(text)``
    the same prepared text, character for character, and ``SlotValues``: the raw text each
    placeholder replaced, in text order — what the value view (agent.model.values) scores, so
    that what masking hides still counts. ``prepare`` itself does not pay for it.

The masks are a data table (``MASKS``: name, compiled pattern, placeholder, optional validator),
applied in table order, each pattern compiled once at import. Order matters: specific shapes go
before the generic ones that would otherwise eat their parts (UUID before HEX before NUM,
timestamps before numbers, IPs before paths). Placeholders contain no digits or hex-only words, so a
later mask never rewrites an earlier placeholder. Changing the table changes what bundles were
trained on: keep placeholders stable and retrain after changing it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from typing import Any, NamedTuple

from agent.decode import lookup_field

DEFAULT_MAX_CHARS = 2048
"""Well above what the embedder reads (MiniLM truncates at 256 tokens, roughly 1,000 characters)."""

MAX_MASKED_INPUT_CHARS = 65_536
"""Masking reads at most this many characters of a text; the rest is cut off first. Masking is
linear in the text's length (about 0.2 µs per character), so this bounds one record's cost (about
15 ms) whatever an event holds. It changes nothing a model sees unless masking and whitespace
collapse shrink the first 65,536 characters below ``max_chars``."""


class MissingTextError(ValueError):
    """A record has no usable text: a field is missing, null, not a scalar, or the text is empty.

    ``field`` names the offending field (None when all were present but the joined text is empty);
    ``present`` lists the record's top-level fields so the message can say what *is* there.
    """

    def __init__(self, message: str, *, field: str | None, present: list[str]) -> None:
        super().__init__(message)
        self.field = field
        self.present = present


@dataclass(frozen=True)
class Mask:
    """One masking rule: every match of ``pattern`` (for which ``accept`` holds) becomes ``placeholder``.

    ``required``: a substring every match contains at least ``required_count`` times; a text with
    fewer is left alone without running the pattern (most log lines have no ``@`` or ``://``, few
    have the five colons of a MAC address). ``precheck``: a pattern every match contains; a text
    it is not found in is left alone (one fast search instead of a ``sub`` trying every position).
    Both are pure speed-ups: they only skip texts the pattern cannot match. ``accept`` sees the
    whole match; a match it refuses is kept as it was, which lets a pattern consume text it does
    not mask (see ``_linear``).
    """

    name: str
    pattern: re.Pattern[str]
    placeholder: str
    accept: Callable[[re.Match[str]], bool] | None = None
    required: str | None = None
    required_count: int = 1
    precheck: re.Pattern[str] | None = None
    _split: re.Pattern[str] | None = dataclass_field(default=None, init=False, repr=False, compare=False)

    def apply(self, text: str) -> str:
        if self.required is not None and (
            self.required not in text
            if self.required_count == 1
            else text.count(self.required) < self.required_count
        ):
            return text
        if self.precheck is not None and self.precheck.search(text) is None:
            return text
        if self.accept is None:
            return self.pattern.sub(self.placeholder, text)
        accept = self.accept
        return self.pattern.sub(lambda m: self.placeholder if accept(m) else m.group(0), text)

    def __post_init__(self) -> None:
        # ``collect`` of a rule without ``accept``: the same pattern inside one capturing group, so
        # ``split`` returns the text between matches and the matches themselves in one C call (no
        # Python call per match). Only for patterns without groups of their own, whose ``split``
        # would return those groups too.
        grouped = (
            re.compile(f"({self.pattern.pattern})", self.pattern.flags)
            if self.accept is None and self.pattern.groups == 0
            else None
        )
        object.__setattr__(self, "_split", grouped)

    def collect(self, text: str, sentinel: str, values: list[str]) -> str:
        """``apply`` that writes ``sentinel`` instead of the placeholder and appends each replaced
        match to ``values`` (in match order). Same prechecks and matches as ``apply``: the two
        differ only in what replaces a match (see ``mask_values``)."""
        if self.required is not None and (
            self.required not in text
            if self.required_count == 1
            else text.count(self.required) < self.required_count
        ):
            return text
        if self.precheck is not None and self.precheck.search(text) is None:
            return text
        grouped = self._split
        if grouped is not None:
            # split and sub find the same matches (empty ones included, Python >= 3.7)
            parts = grouped.split(text)
            if len(parts) == 1:
                return text
            values += parts[1::2]
            return sentinel.join(parts[0::2])
        append = values.append
        accept = self.accept
        if accept is None:

            def replace(m: re.Match[str]) -> str:
                append(m[0])
                return sentinel

        else:

            def replace(m: re.Match[str]) -> str:
                if not accept(m):
                    return m[0]
                append(m[0])
                return sentinel

        return self.pattern.sub(replace, text)


def _is_ipv6(match: re.Match[str]) -> bool:
    candidate = match.group(0)
    colons = candidate.count(":")
    # Without "::" an address has all 8 groups (7 colons), or 6 and a dotted IPv4 tail: anything
    # else (a time of day, "a:b:c") is refused here without the cost of ipaddress's exception.
    if "::" not in candidate and colons != 7 and not (colons == 6 and "." in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return any(c.isalnum() for c in candidate)


def _has_tail(match: re.Match[str]) -> bool:
    return match.group("tail") is not None


_MONTHS = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?"
_TIMESTAMP = "|".join(
    [
        # ISO 8601 / RFC 3339, optional fraction and zone: 2024-05-01T12:00:00.123Z, 2024-05-01 12:00:00+02:00
        rf"\d{{4}}-\d{{2}}-\d{{2}}[T ]{_TIME}(?:Z|[+-]\d{{2}}:?\d{{2}})?",
        # BGL: 2005-06-03-15.42.50.675872
        r"\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2}(?:\.\d+)?",
        # syslog: Nov 9 12:01:01
        rf"{_MONTHS}\s+\d{{1,2}}\s+{_TIME}",
        # dates alone: 2005.06.03, 2005-06-03, 2005/06/03
        r"\d{4}[-./]\d{2}[-./]\d{2}",
        # times alone: 12:01:01, 12:01:01.123
        _TIME,
    ]
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# Linear time. The url and email rules were ``\b[A-Za-z][A-Za-z0-9+.-]*://...`` and
# ``\b[\w.+-]+@domain``: on a long run of scheme / local-part characters with no "://" / "@" after
# it, the regex engine tried again from every word boundary inside the run and rescanned the run
# each time — quadratic (a 200,000-character line took 93 s). Every start inside one run fails or
# succeeds for the same reason (what follows the run), so the rules now consume the whole run
# possessively and make the tail optional: a run without its tail is matched, refused by
# ``_has_tail`` and kept as it was, and the scan moves on past it. Same matches, same output
# (tests/test_textprep.py compares them with the old rules), one pass over the text.
# ``required`` skips a rule whose pattern cannot match the text at all.
MASKS: tuple[Mask, ...] = (
    Mask(
        "url",
        re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*+(?P<tail>://[^\s\"'<>]+)?"),
        "<URL>",
        _has_tail,
        "://",
    ),
    Mask(
        "email",
        re.compile(r"\b[\w.+-]++(?P<tail>@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\b)?"),
        "<EMAIL>",
        _has_tail,
        "@",
        precheck=re.compile(r"@[A-Za-z0-9-]+\.[A-Za-z0-9-]"),  # the tail's shape
    ),
    Mask(
        "uuid",
        re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"),
        "<UUID>",
        required="-",
        required_count=4,
    ),
    # Candidates are validated by the ipaddress module, so "12:01:01" or "std::map" stay untouched.
    Mask(
        "ipv6",
        re.compile(
            r"(?=[0-9A-Fa-f:])(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?(?![\w:])"
        ),
        "<IP>",
        _is_ipv6,
        ":",
        2,
    ),
    # Every alternative holds a time (d:dd) or a date (dddd-dd, dddd.dd, dddd/dd).
    Mask(
        "timestamp",
        # Every alternative starts with a digit or a month's initial: the lookahead fails every
        # other word start at once instead of trying five alternatives there.
        re.compile(rf"\b(?=[0-9JFMASOND])(?:{_TIMESTAMP})\b"),
        "<TS>",
    ),
    # Blue Gene/L locations: R02-M1-N0-C:J12-U11, R23-M0-NE-C:J05-U01, R02-M1-N0-I:J18-U01, R02-M1-N0
    Mask(
        "bgl_node",
        re.compile(r"\bR\d{2}-M\d(?:-[A-Z0-9]{1,2})?(?:-[A-Z](?::J\d{2}-U\d{2})?)?\b"),
        "<NODE>",
        required="-M",
    ),
    # IPv4 with an optional port: 10.251.73.220:50010
    Mask(
        "ipv4",
        re.compile(rf"\b(?=\d){_OCTET}(?:\.{_OCTET}){{3}}(?::\d{{1,5}})?\b"),
        "<IP>",
        required=".",
        required_count=3,
    ),
    # Absolute or ./ ../ ~/ relative paths with at least one segment; "and/or" or "dn228/dn228" stay.
    Mask(
        "path", re.compile(r"(?=[~./])(?<![\w.~/])(?:~|\.{1,2})?(?:/[\w.@%+=,-]+)+/?"), "<PATH>", required="/"
    ),
    Mask(
        "mac",
        re.compile(r"\b[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}\b"),
        "<HEX>",
        required=":",
        required_count=5,
    ),
    # 0x-prefixed hex, or 8+ hex digits mixing digits and letters (pure digit runs are numbers).
    Mask(
        "hex",
        re.compile(r"\b0[xX][0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"),
        "<HEX>",
    ),
    # HDFS block ids: blk_-6952295868487656571
    Mask("hdfs_block", re.compile(r"\bblk_-?\d+\b"), "<BLK>", required="blk_"),
    # Integers and decimals standing alone or after punctuation; digits inside words (dn228, L6) stay.
    Mask("number", re.compile(r"\b\d+(?:\.\d+)*\b"), "<NUM>"),
)

_WHITESPACE = re.compile(r"\s+")


def mask_text(text: str, masks: tuple[Mask, ...] = MASKS) -> str:
    """Apply ``masks`` in order. Exposed for tests and for detectors/quality experiments."""
    for m in masks:
        text = m.apply(text)
    return text


# What masking replaced, in text order. Each mask writes its own sentinel character instead of its
# placeholder; after the last mask the sentinels, read left to right, say which mask's next value
# each slot holds, and are then replaced by the placeholders. A sentinel is, like a placeholder's
# "<" and ">", a non-word, non-space character that no rule's character class contains, and no
# rule matches a placeholder's letters or spans a "<" or ">", so every later rule matches exactly
# what it matches after the placeholder: the masked text is ``mask_text``'s to the character
# (tests/test_textprep.py checks it on every dev text and on fuzz). The sentinels are C1 control
# characters (U+0086-U+0091; U+0085 is whitespace), which keep an ASCII line one byte per
# character so the later rules scan it as fast as ``mask_text`` does; a text that holds one of
# them (mis-decoded Windows-1252 does) gets private-use characters of the BMP, then of plane 15.
# A text holding characters of all three sets cannot be read: its values are None (its masked
# text is still exact).
class _Sentinels(NamedTuple):
    chars: tuple[str, ...]  # one per mask, in MASKS order
    any: re.Pattern[str]
    placeholder_of: dict[str, str]


def _sentinels(base: int) -> _Sentinels:
    chars = tuple(chr(base + i) for i in range(len(MASKS)))
    placeholder_of = {c: m.placeholder for c, m in zip(chars, MASKS, strict=True)}
    return _Sentinels(chars, re.compile(f"[{chars[0]}-{chars[-1]}]"), placeholder_of)


_SENTINEL_SETS = (_sentinels(0x86), _sentinels(0xE000), _sentinels(0xF0000))


class SlotValues(NamedTuple):
    """What the placeholders of a masked text replaced, in text order (the value view's input).

    ``values[n]`` is the raw text behind the n-th placeholder, ``placeholders[n]`` that placeholder
    (``"<NUM>"``, ``"<PATH>"``, ...). ``values`` is None where they could not be read (a text that
    holds characters of every sentinel set, see ``mask_values``). A named tuple: one is
    made per event on the agent's hot path, and a tuple is the cheapest record Python builds.
    """

    values: tuple[str, ...] | None
    placeholders: tuple[str, ...]


NO_VALUES = SlotValues((), ())


def _sentinel_mask(text: str) -> tuple[str, list[tuple[str, str, list[str]]], _Sentinels] | None:
    """``text`` with each mask's matches replaced by its sentinel; (sentinel, placeholder, matches
    in order) of each mask that matched, in mask order; and the sentinels used. None when the text
    holds characters of every sentinel set."""
    if text.isascii():
        sentinels = _SENTINEL_SETS[0]
    else:
        usable = [s for s in _SENTINEL_SETS if s.any.search(text) is None]
        if not usable:
            return None
        sentinels = usable[0]
    used: list[tuple[str, str, list[str]]] = []
    for m, sentinel in zip(MASKS, sentinels.chars, strict=True):
        values: list[str] = []
        text = m.collect(text, sentinel, values)
        if values:
            used.append((sentinel, m.placeholder, values))
    return text, used, sentinels


def mask_values(text: str) -> tuple[str, SlotValues]:
    """``mask_text(text)`` and what each of its placeholders replaced (``SlotValues``).

    Cost: ``mask_text``'s plus, per event, one scan for the sentinels and a few tuple operations
    when more than one rule matched (bench/values.py; docs/detectors.md "The value view").
    """
    marked = _sentinel_mask(text)
    if marked is None:
        return mask_text(text), SlotValues(None, ())
    text, used, sentinels = marked
    if not used:
        return text, NO_VALUES
    if len(used) == 1:  # one rule matched: its matches are the values, in order
        sentinel, placeholder, matched = used[0]
        return text.replace(sentinel, placeholder), SlotValues(tuple(matched), (placeholder,) * len(matched))
    order = sentinels.any.findall(text)
    pending = {}
    for sentinel, placeholder, matched in used:
        pending[sentinel] = iter(matched).__next__
        text = text.replace(sentinel, placeholder)
    placeholder_of = sentinels.placeholder_of
    return text, SlotValues(tuple([pending[c]() for c in order]), tuple([placeholder_of[c] for c in order]))


def _slots_within(text: str, limit: int) -> int:
    """How many placeholders of the masked, collapsed and stripped ``text`` end within its first
    ``limit`` characters (what truncation to ``max_chars`` keeps). Only for texts that truncation
    cuts, so the second masking pass it takes is rare."""
    marked = _sentinel_mask(text)
    assert marked is not None  # the caller read values from this text
    sentinel_text, _, sentinels = marked
    collapsed = _WHITESPACE.sub(" ", sentinel_text).strip()
    kept, shift = 0, 0
    for match in sentinels.any.finditer(collapsed):
        placeholder = sentinels.placeholder_of[match.group(0)]
        if match.start() + shift + len(placeholder) > limit:
            break
        kept += 1
        shift += len(placeholder) - 1
    return kept


@dataclass(frozen=True)
class TextPreparation:
    """How a record becomes embedder input; stored in every bundle (see module docstring).

    fields: dotted paths of the text fields, joined with " " in this order.
    mask: replace variable tokens with placeholders (``MASKS``).
    max_chars: truncate the prepared text to this many characters (after masking).
    """

    fields: tuple[str, ...] = ("text",)
    mask: bool = True
    max_chars: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        if isinstance(self.fields, str) or not self.fields:
            raise ValueError("fields must be a non-empty sequence of field names")
        object.__setattr__(self, "fields", tuple(self.fields))
        if any(not isinstance(f, str) or not f.strip() for f in self.fields):
            raise ValueError(f"field names must be non-empty strings, got {list(self.fields)!r}")
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")

    def extract(self, record: Mapping[str, Any]) -> str:
        """The raw text of ``record``: its ``fields`` joined with a space; MissingTextError if unusable."""
        present = sorted(str(k) for k in record)
        parts: list[str] = []
        for name in self.fields:
            found, value = lookup_field(record, name)
            if not found or value is None:
                raise MissingTextError(
                    f"text field {name!r} is {'null' if found else 'missing'}"
                    f" (fields present: {', '.join(present) or 'none'})",
                    field=name,
                    present=present,
                )
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise MissingTextError(
                    f"text field {name!r} holds a {type(value).__name__}, not text",
                    field=name,
                    present=present,
                )
            parts.append(str(value))
        text = " ".join(parts)
        if not text.strip():
            raise MissingTextError(
                f"text field{'s' if len(self.fields) > 1 else ''} {', '.join(map(repr, self.fields))} empty",
                field=self.fields[0] if len(self.fields) == 1 else None,
                present=present,
            )
        return text

    def prepare(self, text: str) -> str:
        """Mask (if enabled; of the first ``MAX_MASKED_INPUT_CHARS`` characters), collapse
        whitespace, truncate to ``max_chars``."""
        if self.mask:
            text = mask_text(text[:MAX_MASKED_INPUT_CHARS])
        return self._collapse(text)[: self.max_chars].rstrip()

    @staticmethod
    def _collapse(text: str) -> str:
        # Every whitespace character but " " is unprintable, so a printable text without a double
        # space has nothing to collapse (most log lines: the substitution is then skipped).
        if "  " in text or not text.isprintable():
            text = _WHITESPACE.sub(" ", text)
        return text.strip()

    def prepare_values(self, text: str) -> tuple[str, SlotValues]:
        """``prepare(text)`` and what its placeholders replaced (``SlotValues``; the value view's input).

        The prepared text is ``prepare``'s, character for character. The values are those of the
        placeholders that survive truncation to ``max_chars``; without masking there are none.
        Cost: ``prepare``'s plus about 0.3 µs per placeholder (docs/detectors.md, "The value view").
        """
        if not self.mask:
            return self.prepare(text), NO_VALUES
        text = text[:MAX_MASKED_INPUT_CHARS]
        masked, slots = mask_values(text)
        collapsed = self._collapse(masked)
        prepared = collapsed[: self.max_chars].rstrip()
        if len(collapsed) > self.max_chars and slots.values:
            kept = _slots_within(text, self.max_chars)
            slots = SlotValues(slots.values[:kept], slots.placeholders[:kept])
        return prepared, slots

    def __call__(self, record: Mapping[str, Any]) -> str:
        """``prepare(extract(record))``: what the embedder sees for a record."""
        return self.prepare(self.extract(record))

    def to_dict(self) -> dict[str, Any]:
        return {"fields": list(self.fields), "mask": self.mask, "max_chars": self.max_chars}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextPreparation:
        """Inverse of ``to_dict``; unknown keys are refused (a newer bundle must not be half-understood)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown text preparation keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        raw_fields = data.get("fields", ("text",))
        if isinstance(raw_fields, str) or not isinstance(raw_fields, list | tuple):
            raise ValueError(f"text preparation 'fields' must be a list of names, got {raw_fields!r}")
        mask = data.get("mask", True)
        max_chars = data.get("max_chars", DEFAULT_MAX_CHARS)
        if not isinstance(mask, bool):
            raise ValueError(f"text preparation 'mask' must be true or false, got {mask!r}")
        if isinstance(max_chars, bool) or not isinstance(max_chars, int):
            raise ValueError(f"text preparation 'max_chars' must be an integer, got {max_chars!r}")
        return cls(fields=tuple(raw_fields), mask=mask, max_chars=max_chars)
