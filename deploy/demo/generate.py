#!/usr/bin/env python3
"""Generate the demo's sample data: ``train.jsonl`` (normal events), ``stream.jsonl`` (the replay),
``history.jsonl`` (rates) and ``requests.jsonl`` (sessions).

The demo ships these files so it never depends on ../shared/datasets or a download; this script
is how they were made, and it is deterministic (fixed seeds, fixed clock), so
``python deploy/demo/generate.py --check`` proves the committed files are exactly its output.

The events look like what an online shop's services log in JSON: a timestamp, the service, the
host, a level and a human-readable ``message`` (the field the agent scores). Normal traffic comes
from a few dozen message templates with variable fields (ids, durations, IPs, amounts). Anomalies
are the things an SRE wants paged for and that look nothing like normal traffic: stack traces,
OOM kills, disk and filesystem failures, brute-force and injection attempts, kernel faults,
expired certificates. A few malformed records (not JSON, no ``message``) exercise the dead-letter
topic.

``stream.jsonl`` lines are ``{"label": "normal"|"anomaly"|"malformed", "value": <event or raw
string>}``: the demo sends ``value`` (JSON-encoded when it is an object, verbatim when it is a
string) and keeps ``label`` to itself so it can say which alerts were expected. Anomalies are spread
evenly from the start of the stream, so any prefix (``anomaly-agent demo --events 200``) holds a
proportional share of them.

``history.jsonl`` is 45 minutes of the platform's own logs, replayed at once with their own times
(``at_ms`` after the history's start) as Kafka timestamps on a partition of their own: every line
is normal on its own, but a cache stampede makes the search service's "Cache miss" line surge
about 30x for a minute (``label: "spike"``), and the orders service's heartbeat (its connection
pool stats every 10 s, ``label: "heartbeat"``) stops after 30 minutes. The agent's rates see one
spike and one silence (docs/rates.md).

``requests.jsonl`` is 8 request sessions of the checkout service ("request req-3f2a9c1b start ...",
"... auth ok", sometimes "... cart cache miss ...", "... served ...", "... done"), replayed the same
way on a partition of their own; the third never logs "done" (``label: "broken"``). ``train.jsonl``
holds 24 complete ones among its events, from which the bundle's session model learns the steps'
order: the agent's sessions (docs/sessions.md) alert once for the broken request.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TRAIN_FILE = HERE / "train.jsonl"
STREAM_FILE = HERE / "stream.jsonl"
HISTORY_FILE = HERE / "history.jsonl"
REQUESTS_FILE = HERE / "requests.jsonl"

TRAIN_EVENTS = 800
TRAIN_SESSIONS = 24
STREAM_EVENTS = 500
STREAM_ANOMALIES = 30
STREAM_MALFORMED = 3
START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)

# Message templates: "{kind}" or "{kind:args}" placeholders are filled by ``_fill`` —
# {int:LO:HI}, {choice:a|b|c}, {hex:BITS}, {oid}, {uuid}, {ip}, {public_ip}, {user}, {amount}, {pod:APP}.
_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
_FIRST_NAMES = ["anna", "ben", "chloe", "dev", "emil", "fatima", "george", "hana", "ivan", "julia"]


def _fill(r: random.Random, template: str) -> str:
    def one(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(2) or ""
        if kind == "int":
            low, high = args.split(":")
            return str(r.randint(int(low), int(high)))
        if kind == "choice":
            choice: str = r.choice(args.split("|"))
            return choice
        if kind == "hex":
            bits = int(args)
            return f"{r.getrandbits(bits):0{bits // 4}x}"
        if kind == "oid":
            return f"ORD-{r.randint(100000, 999999)}"
        if kind == "uuid":
            return str(uuid.UUID(int=r.getrandbits(128), version=4))
        if kind == "ip":
            return f"10.{r.randint(0, 3)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
        if kind == "public_ip":
            first = r.choice([45, 89, 103, 185, 194])
            return f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
        if kind == "user":
            return f"{r.choice(_FIRST_NAMES)}.{r.choice('kmstw')}{r.randint(1, 99)}"
        if kind == "amount":
            return f"{r.randint(5, 900)}.{r.randint(0, 99):02d}"
        if kind == "pod":
            suffix = "".join(r.choices("bcdfghjklmnpqrstvwxz", k=5))
            return f"{args}-{r.randint(5, 9)}c{r.randint(10, 99)}f-{suffix}"
        raise ValueError(f"unknown placeholder {match.group(0)!r}")

    return _PLACEHOLDER.sub(one, template)


_CLIENTS = "mobile-app|web-frontend|partner-feed"
_WAREHOUSES = "BER-1|HAM-2|MUC-1"
_JOBS = "nightly-report|cleanup-sessions|sitemap-build"

# (service, level, template) for normal traffic.
NORMAL: list[tuple[str, str, str]] = [
    (
        "edge-proxy",
        "INFO",
        "GET /api/v1/orders/{oid} 200 {int:4:90}ms upstream=orders-svc bytes={int:300:4000}",
    ),
    ("edge-proxy", "INFO", "POST /api/v1/cart/items 201 {int:8:120}ms user={user}"),
    (
        "edge-proxy",
        "INFO",
        "GET /api/v1/products?category={choice:shoes|books|garden|toys}&page={int:1:20} 200 {int:10:150}ms",
    ),
    ("edge-proxy", "INFO", "GET /static/js/app.{hex:32}.js 304 {int:1:5}ms"),
    (
        "edge-proxy",
        "INFO",
        "TLS handshake completed with {ip}, protocol TLSv1.3, cipher TLS_AES_128_GCM_SHA256",
    ),
    (
        "edge-proxy",
        "INFO",
        "Rate limiter: client {choice:" + _CLIENTS + "} at {int:10:700}/1000 requests this minute",
    ),
    ("auth-svc", "INFO", "User {user} logged in from {ip} via SSO"),
    ("auth-svc", "INFO", "Session {uuid} refreshed for user {user}"),
    ("auth-svc", "INFO", "Token issued for client {choice:" + _CLIENTS + "} (scope=read:orders, ttl=3600s)"),
    ("auth-svc", "INFO", "User {user} logged out after {int:2:240} minutes"),
    ("checkout-svc", "INFO", "Order {oid} created with {int:1:9} items, total {amount} EUR"),
    ("checkout-svc", "INFO", "Feature flag checkout_v2 evaluated for user {user}: {choice:enabled|disabled}"),
    ("checkout-svc", "INFO", "Applied voucher SPRING{int:10:30} to order {oid}: -{int:2:40}.00 EUR"),
    (
        "payments-svc",
        "INFO",
        "Payment {uuid} authorized: amount={amount} EUR, provider={choice:stripe|adyen|paypal}",
    ),
    ("payments-svc", "INFO", "Refund for order {oid} settled: {amount} EUR"),
    (
        "payments-svc",
        "INFO",
        "Consumer group payments-workers committed offset {int:10000:900000} for partition {int:0:11}",
    ),
    (
        "orders-svc",
        "INFO",
        "Query executed in {int:1:40}ms: SELECT id, status FROM orders WHERE customer_id = $1",
    ),
    ("orders-svc", "INFO", "Connection pool stats: active={int:1:30} idle={int:5:40} max=50"),
    (
        "orders-svc",
        "WARN",
        "Slow query ({int:500:950}ms) on table order_items, rows examined {int:20000:90000}",
    ),
    ("orders-svc", "INFO", "Order {oid} status changed from {choice:PAID|PACKED} to {choice:PACKED|SHIPPED}"),
    (
        "shipping-svc",
        "INFO",
        "Shipped order {oid} via {choice:DHL|UPS|DPD}, tracking {int:100000000000:999999999999}",
    ),
    (
        "shipping-svc",
        "INFO",
        "Label printed for parcel {int:100000:999999} at warehouse {choice:" + _WAREHOUSES + "}",
    ),
    (
        "inventory-svc",
        "INFO",
        "Inventory reserved: sku=SKU-{int:1000:9999} qty={int:1:5} warehouse={choice:" + _WAREHOUSES + "}",
    ),
    ("inventory-svc", "INFO", "Stock level sync finished: {int:2000:9000} SKUs updated in {int:2:30}s"),
    (
        "search-svc",
        "INFO",
        'Search query "{choice:running shoes|garden hose|lego|kindle|coffee grinder}" '
        "returned {int:0:400} results in {int:5:80}ms",
    ),
    ("search-svc", "INFO", "Cache hit ratio {int:82:99}% over last 60s (keys={int:10000:80000})"),
    ("search-svc", "INFO", "Cache miss for key product:{int:1000:99999}, loading from database"),
    ("notification-svc", "INFO", "Email notification queued for order {oid} (template=order_confirmation)"),
    ("notification-svc", "INFO", "Push notification delivered to device {hex:64} in {int:40:900}ms"),
    (
        "billing-svc",
        "INFO",
        "Uploaded invoice INV-{int:10000:99999}.pdf to s3://invoices-prod/2026/03/ ({int:20:300} KB)",
    ),
    ("scheduler", "INFO", "Scheduled job {choice:" + _JOBS + "} started (run id {uuid})"),
    (
        "scheduler",
        "INFO",
        "Scheduled job {choice:" + _JOBS + "} finished in {int:3:600}s, {int:0:50000} rows",
    ),
    ("platform", "INFO", "Health check passed: db=ok cache=ok queue=ok ({int:2:30}ms)"),
    ("platform", "INFO", "Kubernetes liveness probe succeeded for pod {pod:checkout}"),
    ("platform", "INFO", "Autoscaler: desired replicas {int:2:8}, current {int:2:8} (cpu {int:20:75}%)"),
    ("platform", "INFO", "Rotated log file /var/log/app/app.log ({int:50:500} MB)"),
    ("platform", "INFO", "Backup snapshot snap-{hex:32} completed: {int:5:80} GB in {int:60:900}s"),
    ("platform", "INFO", "GC pause G1 Young Generation {int:3:40}ms, heap {int:300:1500}M/2048M"),
]

# Anomalies an SRE wants to see: each renders a message far from anything in NORMAL.
ANOMALY: list[tuple[str, str, str]] = [
    (
        "checkout-svc",
        "ERROR",
        "java.lang.NullPointerException: "
        'Cannot invoke "com.shop.Order.getCustomer()" because "order" is null\n'
        "\tat com.shop.checkout.OrderService.finalizeOrder(OrderService.java:{int:150:400})\n"
        "\tat com.shop.checkout.CheckoutController.submit(CheckoutController.java:88)\n"
        "\tat org.springframework.web.servlet.FrameworkServlet.service(FrameworkServlet.java:897)",
    ),
    (
        "orders-svc",
        "ERROR",
        "Traceback (most recent call last):\n"
        '  File "/app/orders/worker.py", line {int:40:300}, in handle_message\n'
        "    customer = payload['customer_id']\n"
        "KeyError: 'customer_id'",
    ),
    (
        "platform",
        "CRIT",
        "Out of memory: Killed process {int:1000:60000} (java) total-vm:{int:8000000:16000000}kB, "
        "anon-rss:{int:3000000:7000000}kB, file-rss:0kB, shmem-rss:0kB, UID:1000 oom_score_adj:0",
    ),
    (
        "platform",
        "CRIT",
        "Memory cgroup out of memory: Killed process {int:1000:60000} (python3) in pod {pod:orders}, "
        "OOMKilled, restart count {int:3:12}",
    ),
    (
        "platform",
        "ERROR",
        "blk_update_request: I/O error, dev sdb, sector {int:1000000:900000000} op 0x1:(WRITE) flags 0x800",
    ),
    (
        "platform",
        "ERROR",
        "EXT4-fs error (device nvme0n1p2): ext4_find_entry:1455: inode #{int:100000:9999999}: "
        "comm postgres: reading directory lblock 0",
    ),
    (
        "platform",
        "WARN",
        "smartd: Device: /dev/sda [SAT], {int:8:200} Currently unreadable (pending) sectors, "
        "SMART overall-health self-assessment test result: FAILED",
    ),
    (
        "orders-svc",
        "FATAL",
        'could not write to file "pg_wal/xlogtemp.{int:100:9999}": No space left on device',
    ),
    (
        "auth-svc",
        "WARN",
        "sshd: Failed password for invalid user {choice:admin|oracle|test|ubuntu} from {public_ip} "
        "port {int:30000:65000} ssh2",
    ),
    (
        "auth-svc",
        "ALERT",
        "Brute force detected: {int:200:5000} failed logins for root from {public_ip} in 60s, account locked",
    ),
    (
        "edge-proxy",
        "ALERT",
        "WAF blocked SQL injection attempt from {public_ip}: "
        "GET /api/v1/products?id=1' UNION SELECT username, password FROM users--",
    ),
    (
        "platform",
        "CRIT",
        "kernel: BUG: unable to handle page fault for address: ffff{hex:48}, "
        "Oops: 0000 [#1] SMP NOPTI, RIP: 0010:__list_del_entry_valid+0x2a/0x90",
    ),
    (
        "search-svc",
        "ERROR",
        "indexer[{int:1000:9999}]: segfault at 0 ip {hex:48} sp {hex:48} "
        "error 4 in libc.so.6[7f1c2a400000+195000]",
    ),
    (
        "payments-svc",
        "ERROR",
        "x509: certificate has expired or is not yet valid: current time 2026-03-02T09:14:00Z is after "
        "2026-03-01T23:59:59Z (issuer CN=Shop Internal CA {int:1:3})",
    ),
    (
        "inventory-svc",
        "FATAL",
        "panic: runtime error: index out of range [5] with length 5\n\n"
        "goroutine {int:1:400} [running]:\n"
        "main.(*Reservation).Apply(...)\n\t/src/inventory/reserve.go:112 +0x1d4",
    ),
    ("platform", "CRIT", "etcd: raft: lost leader, cluster unavailable, {int:2:3} of 3 members unreachable"),
]

MALFORMED: list[str] = [
    '{"service": "checkout-svc", "level": "INFO", "message": "Order ORD-1 created',  # truncated JSON
    '{"service": "edge-proxy", "level": "INFO", "msg": "GET /healthz 200 1ms"}',  # no "message" field
    "plain text, not JSON: GET /api/v1/cart 200 12ms",
]


def _event(r: random.Random, when: datetime, template: tuple[str, str, str]) -> dict[str, Any]:
    service, level, message = template
    return {
        "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "service": service,
        "host": f"{service}-{r.randint(1, 3)}",
        "level": level,
        "message": _fill(r, message),
    }


def train_events() -> list[dict[str, Any]]:
    """Normal events only; every template appears, in random order and proportions. Interleaved
    with them, by time, the lines of ``TRAIN_SESSIONS`` complete request sessions (the session
    model learns from those; the line detector learns their lines are normal)."""
    r = random.Random(20260302)
    when = START
    events = []
    for i in range(TRAIN_EVENTS):
        when += timedelta(milliseconds=r.randint(50, 900))
        # The first pass covers every template once, so even a rare one is in the training set.
        template = NORMAL[i] if i < len(NORMAL) else r.choice(NORMAL)
        events.append(_event(r, when, template))
    # A generator of its own: the 800 events above stay what they were before sessions came.
    s = random.Random(20260305)
    span_ms = round((when - START).total_seconds() * 1000) - 5_000
    for index in range(TRAIN_SESSIONS):
        begin = START + timedelta(milliseconds=index * span_ms // TRAIN_SESSIONS + s.randint(0, 3_000))
        for at_ms, template in request_session(s, complete=True):
            events.append(_event(s, begin + timedelta(milliseconds=at_ms), template))
    events.sort(key=lambda event: str(event["ts"]))
    return events


def stream_records() -> list[dict[str, Any]]:
    """The replayed stream: normal events with anomalies spread evenly and a few malformed records."""
    r = random.Random(20260303)
    anomaly_at = {4 + round(i * (STREAM_EVENTS - 10) / STREAM_ANOMALIES) for i in range(STREAM_ANOMALIES)}
    # Malformed records sit right after an anomaly, never on one.
    malformed_at = {sorted(anomaly_at)[3 + i * 9] + 1 for i in range(STREAM_MALFORMED)}
    when = START + timedelta(hours=2)
    records: list[dict[str, Any]] = []
    anomalies = r.sample(range(len(ANOMALY)), len(ANOMALY))
    malformed = iter(MALFORMED)
    for i in range(STREAM_EVENTS):
        when += timedelta(milliseconds=r.randint(50, 900))
        if i in anomaly_at:
            # Cycle through every anomaly kind before repeating one.
            kind = anomalies[len([p for p in anomaly_at if p < i]) % len(ANOMALY)]
            records.append({"label": "anomaly", "value": _event(r, when, ANOMALY[kind])})
        elif i in malformed_at:
            records.append({"label": "malformed", "value": next(malformed)})
        else:
            records.append({"label": "normal", "value": _event(r, when, r.choice(NORMAL))})
    return records


HISTORY_MINUTES = 45
HEARTBEAT_STOPS_MIN = 30
STAMPEDE_MIN = 20
# Periodic lines of NORMAL whose template is one pattern once masked: the heartbeat that stops,
# two that go on, and the line the stampede multiplies.
HEARTBEAT = ("orders-svc", "INFO", "Connection pool stats: active={int:1:30} idle={int:5:40} max=50")
STEADY = [
    ("search-svc", "INFO", "Cache hit ratio {int:82:99}% over last 60s (keys={int:10000:80000})"),
    ("platform", "INFO", "Autoscaler: desired replicas {int:2:8}, current {int:2:8} (cpu {int:20:75}%)"),
]
CACHE_MISS = ("search-svc", "INFO", "Cache miss for key product:{int:1000:99999}, loading from database")


def history_records() -> list[dict[str, Any]]:
    """45 minutes of platform logs, every line normal: a heartbeat every 10 s that stops after 30
    minutes, two steady lines every 15 and 30 s, and about 3 cache misses a minute that surge to 90
    in the stampede's minute. (No sporadic lines: the demo shortens the warm-up to 10 minutes, too
    little to learn a line that comes once in a while; production keeps a day.)"""
    r = random.Random(20260304)
    rows: list[tuple[int, str, tuple[str, str, str]]] = []
    for second in range(0, HISTORY_MINUTES * 60, 10):
        if second < HEARTBEAT_STOPS_MIN * 60:
            rows.append((second * 1000 + r.randint(0, 300), "heartbeat", HEARTBEAT))
        if second % 30 == 0:
            rows.append((second * 1000 + r.randint(0, 300), "normal", STEADY[0]))
            rows.append((second * 1000 + 15_000 + r.randint(0, 300), "normal", STEADY[0]))
            rows.append((second * 1000 + r.randint(0, 300), "normal", STEADY[1]))
    for minute in range(HISTORY_MINUTES):
        stampede = minute == STAMPEDE_MIN
        label = "spike" if stampede else "normal"
        for _ in range(90 if stampede else r.randint(2, 4)):
            rows.append((minute * 60_000 + r.randrange(60_000), label, CACHE_MISS))
    rows.sort(key=lambda row: row[0])
    start = START + timedelta(hours=1)
    return [
        {"at_ms": at, "label": label, "value": _event(r, start + timedelta(milliseconds=at), template)}
        for at, label, template in rows
    ]


# Request sessions: the lines one request logs, keyed by its id ("request req-3f2a9c1b ..."; the
# agent's [sessions] key_pattern finds it in the raw text). A complete request starts, passes
# auth, sometimes misses the cart cache, is served and says done; the session model learns that
# order from training. The walkthrough replays REQUESTS of them, one of which (BROKEN) stops after
# "served": every line of it is normal, only its missing end is not.
REQUEST_SERVICE = "checkout-svc"
REQUEST_START = "request {rid} start POST /api/v1/checkout items={int:1:6}"
REQUEST_STEPS = [
    "request {rid} auth ok",
    "request {rid} cart cache miss, loaded from database",  # optional: about one request in three
    "request {rid} served status=200 duration_ms={int:20:400}",
    "request {rid} done",
]
REQUESTS = 8
BROKEN = 2  # the third request (0-based): its last step never comes
REQUEST_EVERY_MS = 15_000  # one request starts every 15 s: 8 requests span 1 min 46 s
# The demo's [sessions] gap (deploy/demo/agent.toml and the demo's train flags).
SESSION_GAP_MS = 30_000


def _request_id(r: random.Random) -> str:
    """``req-`` and 8 hex digits that mix digits and letters, so masking makes every id <HEX>."""
    while True:
        rid = f"{r.getrandbits(32):08x}"
        if any(c.isdigit() for c in rid) and any(c.isalpha() for c in rid):
            return f"req-{rid}"


def request_session(r: random.Random, *, complete: bool) -> list[tuple[int, tuple[str, str, str]]]:
    """One request's lines as (ms after its start, (service, level, template)); without its
    ``done`` when not ``complete``. Steps are 30-700 ms apart, far within the gap."""
    rid = _request_id(r)
    steps = [REQUEST_START, REQUEST_STEPS[0]]
    if complete and r.random() < 1 / 3:  # the broken request takes the plain path: only its end is odd
        steps.append(REQUEST_STEPS[1])
    steps += REQUEST_STEPS[2:] if complete else REQUEST_STEPS[2:3]
    at_ms, out = 0, []
    for step in steps:
        out.append((at_ms, (REQUEST_SERVICE, "INFO", step.replace("{rid}", rid))))
        at_ms += r.randint(30, 700)
    return out


def request_records() -> list[dict[str, Any]]:
    """The walkthrough's request sessions, replayed at once with their own times (``at_ms``) on a
    partition of their own: ``label`` "normal" for the complete ones, "broken" for every line of
    the one that never says done. The later requests carry that partition's event time more than
    the gap past the broken one's last line, so the agent closes it (and alerts) deterministically."""
    r = random.Random(20260306)
    rows: list[tuple[int, str, tuple[str, str, str]]] = []
    for index in range(REQUESTS):
        broken = index == BROKEN
        label = "broken" if broken else "normal"
        begin = index * REQUEST_EVERY_MS + r.randint(0, 2_000)
        for at_ms, template in request_session(r, complete=not broken):
            rows.append((begin + at_ms, label, template))
    rows.sort(key=lambda row: row[0])
    broken_last = max(at for at, label, _ in rows if label == "broken")
    assert max(at for at, _, _ in rows) >= broken_last + SESSION_GAP_MS, "the broken request would not close"
    start = START + timedelta(hours=3)
    return [
        {"at_ms": at, "label": label, "value": _event(r, start + timedelta(milliseconds=at), template)}
        for at, label, template in rows
    ]


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the committed files differ from what this script generates",
    )
    args = parser.parse_args(argv)
    outputs = {
        TRAIN_FILE: _jsonl(train_events()),
        STREAM_FILE: _jsonl(stream_records()),
        HISTORY_FILE: _jsonl(history_records()),
        REQUESTS_FILE: _jsonl(request_records()),
    }
    if args.check:
        stale = [
            path.name for path, text in outputs.items() if not path.is_file() or path.read_text() != text
        ]
        if stale:
            print(f"out of date: {', '.join(stale)}; run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    for path, text in outputs.items():
        path.write_text(text)
        print(f"wrote {path} ({text.count(chr(10))} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
