"""Reading input files for train / score / evaluate: JSONL, CSV/TSV or plain text lines.

The format follows the file name: ``.jsonl`` (and ``.json``: JSON lines, or one JSON array of
objects) → one object per line; ``.csv`` / ``.tsv`` → a header row, then one record per row;
anything else (``.log``, ``.txt``, no extension) → one record ``{"text": line}`` per non-blank line.

Every record keeps the 1-based line number it starts on, so errors and ``score`` output point at
the input. Blank lines are skipped (they are not records). Labels come from a field/column
(dotted path for JSON). Plain text has no named fields, so there ``--label-field`` is a
whitespace-separated column number: ``1`` takes the first token as the label and removes it from
the text the model sees (loghub BGL/Thunderbird lines start with ``-`` for normal or an alert tag).

Problems surface as ``InputError`` with a one-line message naming the file, the line and what to
fix; the CLI prints it and exits 2.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from agent.decode import lookup_field
from agent.model.textprep import MissingTextError, SlotValues, TextPreparation

Format = Literal["jsonl", "json-array", "csv", "tsv", "text"]
TEXT_FIELD = "text"
"""The field a plain-text line is stored under."""

_TOKEN = re.compile(r"\S+")


class InputError(Exception):
    """Unusable input; the message is one line that says which file, which line and what is wrong."""


@dataclass(frozen=True)
class Record:
    line: int
    data: dict[str, Any]


def detect_format(path: Path) -> Format:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        with path.open("rb") as fh:
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        return "json-array" if head.startswith(b"[") else "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".tsv":
        return "tsv"
    return "text"


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path} line {number}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from None
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def _label_column(label_field: str | None, path: Path) -> int | None:
    if label_field is None:
        return None
    if not label_field.isdigit() or int(label_field) < 1:
        raise InputError(
            f"{path} is plain text (no named fields): --label-field must be a column number"
            f" (1 = first whitespace-separated token), got {label_field!r}"
        )
    return int(label_field)


def _text_records(path: Path, label_field: str | None) -> Iterator[Record]:
    column = _label_column(label_field, path)
    for number, raw in _decoded_lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if column is None or label_field is None:
            yield Record(number, {TEXT_FIELD: line})
            continue
        tokens = list(_TOKEN.finditer(line))
        if len(tokens) < column:
            raise InputError(f"{path} line {number}: has {len(tokens)} columns, no label column {column}")
        token = tokens[column - 1]
        text = (line[: token.start()] + line[token.end() :]).strip()
        yield Record(number, {TEXT_FIELD: text, label_field: token.group(0)})


def _jsonl_records(path: Path) -> Iterator[Record]:
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(data, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, got {type(data).__name__}")
        yield Record(number, data)


def _json_array_records(path: Path) -> Iterator[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a valid JSON array ({exc})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of objects or JSON lines")
    for index, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise InputError(f"{path} element {index}: expected a JSON object, got {type(item).__name__}")
        yield Record(index, item)


def _csv_records(path: Path, delimiter: str) -> Iterator[Record]:
    numbers: list[int] = []

    def lines() -> Iterator[str]:
        for number, line in _decoded_lines(path):
            numbers.append(number)
            yield line

    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        start = len(numbers) + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) > len(header):
                    raise InputError(
                        f"{path} line {start}: {len(row)} values but the header has {len(header)} columns"
                    )
                yield Record(start, dict(zip(header, row, strict=False)))
            start = len(numbers) + 1
    except csv.Error as exc:
        raise InputError(f"{path} line {len(numbers)}: malformed CSV ({exc})") from None


def iter_records(path: Path, *, label_field: str | None = None) -> Iterator[Record]:
    """Records of ``path`` in file order (see module docstring); InputError if the file is unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if not path.is_file():
        raise InputError(f"input {path} is not a file")
    fmt = detect_format(path)
    if fmt == "text":
        return _text_records(path, label_field)
    if fmt == "jsonl":
        return _jsonl_records(path)
    if fmt == "json-array":
        return _json_array_records(path)
    return _csv_records(path, "," if fmt == "csv" else "\t")


def read_records(path: Path, *, label_field: str | None = None) -> list[Record]:
    """All records of ``path``; InputError if it holds none."""
    records = list(iter_records(path, label_field=label_field))
    if not records:
        raise InputError(f"input file {path} holds no records (it is empty or blank)")
    return records


def text_prep_for_input(path: Path, text_field: str | None, base: TextPreparation) -> TextPreparation:
    """``base`` reading this input's text fields.

    Plain text: ``text``; else ``text_field`` (comma-separated dotted paths) if given; else
    ``base.fields`` (score/evaluate default to the fields the bundle was trained on).
    """
    if detect_format(Path(path)) == "text":
        fields: tuple[str, ...] = (TEXT_FIELD,)
    elif text_field is not None:
        fields = tuple(f.strip() for f in text_field.split(",") if f.strip())
        if not fields:
            raise InputError(f"--text-field {text_field!r} names no field")
    else:
        fields = base.fields
    return replace(base, fields=fields)


def prepared_texts(records: Iterable[Record], text_prep: TextPreparation, path: Path) -> list[str]:
    """``text_prep(record)`` for each record; a missing/empty text field is an InputError naming the line."""
    return [text_prep.prepare(text) for text in extracted_texts(records, text_prep, path)]


def prepared_values(
    records: Iterable[Record], text_prep: TextPreparation, path: Path
) -> tuple[list[str], list[SlotValues]]:
    """``prepared_texts`` (the same texts, character for character) and what each text's placeholders
    replaced (``TextPreparation.prepare_values``: the value view's input); InputError naming the line."""
    pairs = [text_prep.prepare_values(text) for text in extracted_texts(records, text_prep, path)]
    return [text for text, _ in pairs], [values for _, values in pairs]


def extracted_texts(records: Iterable[Record], text_prep: TextPreparation, path: Path) -> list[str]:
    """``text_prep.extract(record)`` (not yet prepared) for each record; InputError naming the line."""
    texts: list[str] = []
    for record in records:
        try:
            texts.append(text_prep.extract(record.data))
        except MissingTextError as exc:
            raise InputError(f"{path} line {record.line}: {exc}") from None
    return texts


def labels_of(records: Iterable[Record], label_field: str, path: Path) -> list[str]:
    """The label of every record as a string; InputError naming the line if one has none."""
    labels: list[str] = []
    for record in records:
        found, value = lookup_field(record.data, label_field)
        if not found or value is None or isinstance(value, dict | list) or str(value).strip() == "":
            present = ", ".join(sorted(str(k) for k in record.data)) or "none"
            what = (
                "missing"
                if not found
                else "empty"
                if value is None or str(value).strip() == ""
                else "not a value"
            )
            raise InputError(
                f"{path} line {record.line}: label field {label_field!r} is {what}"
                f" (fields present: {present})"
            )
        labels.append(str(value).strip())
    return labels


def parse_normal_labels(spec: str, found: Sequence[str], label_field: str) -> list[str]:
    """Split ``--normal-labels``; InputError if one never occurs in the data, listing the labels found."""
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not wanted:
        raise InputError("--normal-labels is empty; give one or more labels separated by commas")
    counts = Counter(found)
    unknown = [w for w in wanted if w not in counts]
    if unknown:
        listing = ", ".join(f"{label!r} ({n})" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        raise InputError(
            f"--normal-labels {', '.join(map(repr, unknown))} never occur{'s' if len(unknown) == 1 else ''}"
            f" in label field {label_field!r}; labels found: {listing}"
        )
    return wanted
