"""Optional alert sink: the alert topic's alerts, posted to a Prometheus Alertmanager.

Kafka stays the record of truth. The agent publishes every alert to the alert topic inside its
transaction; only once that transaction has committed does it hand the same documents to
``AlertmanagerSink.submit``, which queues them and returns. A daemon thread posts them in batches
to Alertmanager's v2 API (``POST <url>/api/v2/alerts``, a JSON list of postable alerts), so that
routing, grouping, silences, inhibition and the receivers (mail, chat, paging) people already run
apply to text anomalies too.

Delivery is at-least-once relative to Kafka and never slows the Kafka loop: ``submit`` does not
block and does not raise; the queue is bounded (the oldest alerts are dropped first when it is
full); failed POSTs are retried with exponential backoff for a bounded time, then dropped. Every
alert given up is counted in ``anomaly_agent_alertmanager_alerts_dropped_total``. A crash between
the commit and the POST loses the Alertmanager copy, never the Kafka one.

``alertmanager_alert`` is the pure mapping of one alert document (schema v2, docs/alert-schema.md)
to one Alertmanager alert. Its labels are the alert's identity in Alertmanager and are bounded:
the pattern id, the cluster, the detector, the model and operator-chosen event fields, never the
text. So an alert and the summary that closes its cooldown window (same pattern, same labels) are
one alert to Alertmanager: the summary updates its annotations and resolves it.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import IO, Any

from agent import __version__
from exporters.metrics import AgentMetrics

log = logging.getLogger(__name__)

ALERTS_PATH = "/api/v2/alerts"
# Alerts per POST: one request per burst instead of one per alert, small enough that a request
# body stays well under a megabyte (alerts carry at most ~2 KiB of annotations each).
BATCH_MAX_ALERTS = 500
# Retry backoff after a failed POST: 0.5 s doubling to 10 s, for up to ``max_retry_s`` per batch.
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
# Label values are identity and index keys in Alertmanager: short. Annotations are for people.
LABEL_VALUE_MAX_CHARS = 128
TEXT_MAX_CHARS = 512
NEIGHBOUR_TEXT_MAX_CHARS = 256
# Bytes of a rejected request's response body kept for the log line.
ERROR_BODY_MAX_BYTES = 2048
# The labels the mapping sets itself; a label field with one of these names is skipped, so an
# event field can never overwrite the alert's identity.
FIXED_LABELS = frozenset({"alertname", "pattern_id", "cluster", "detector", "model_id"})
DEFAULT_ALERTNAME = "TextAnomaly"
# alertname per kind of alert beside anomalous events (a summary takes its window's kind).
DEFAULT_ALERTNAMES: Mapping[str, str] = {
    "spike": "TextPatternSpike",
    "silence": "TextPatternSilence",
    "session": "TextSessionAnomaly",
}

_LABEL_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_WHITESPACE_RUN = re.compile(r"\s+")


# --- mapping -----------------------------------------------------------------------------------


def alertmanager_alert(
    alert: Mapping[str, Any],
    *,
    label_fields: Sequence[str],
    alertname: str,
    cooldown_seconds: float,
    generator_url: str | None,
    alertnames: Mapping[str, str] = DEFAULT_ALERTNAMES,
) -> dict[str, Any]:
    """One alert-topic document (schema v3) as one Alertmanager v2 ``postableAlert``.

    Pure and total: a field missing from ``alert`` (a v1 document has no ``pattern``, ``kind``,
    ``neighbours`` or ``group``) omits the label or annotation built from it instead of raising.

    * ``labels`` (bounded, never the text): ``alertname`` (``alertnames[rate.kind]`` for a spike
      or a silence and a summary of spikes, else ``alertname``), ``pattern_id``, ``cluster`` (the
      cluster's label, else its id), ``detector``, ``model_id``, and each name in ``label_fields``
      whose value in ``alert["fields"]`` (a top-level key, else a dotted path into nested
      objects) is a string, int or bool (bools as ``true``/``false``), cut to 128 characters.
      Label names are sanitised to ``[a-zA-Z_][a-zA-Z0-9_]*``; a name equal to a fixed label, or
      to an earlier field's sanitised name, is skipped. Empty values are omitted (Alertmanager
      treats an empty label as an absent one).
    * ``annotations``: ``summary`` (the event text, cut to 512 characters), ``template`` (the
      pattern template, cut likewise), ``score`` ("1.42"), ``neighbours`` (one
      ``"0.93  <text>"`` line per nearest normal neighbour, "" when there are none),
      ``alert_id``, ``source`` (``topic/partition/offset``), for summaries ``suppressed`` (the
      count) and ``window`` (``"<start> .. <end>"``), and for rate alerts ``rate`` (what was
      counted against what was expected).
    * timing: an ``alert`` starts at ``detected_at`` and ends ``cooldown_seconds`` later, when
      the agent's cooldown for its pattern would have ended; a ``summary`` starts at
      ``group.window_start`` and ends at its own ``detected_at``, resolving the alert with the
      window's final count. The end is never before the start (Alertmanager rejects that).
      Without a parsable ``detected_at`` both are omitted and Alertmanager stamps its own.
      ``cooldown_seconds`` must be finite and >= 0 (ValueError otherwise: a configuration bug).
    * ``generatorURL`` when ``generator_url`` is given (a link back, e.g. to a dashboard).
    """
    if not (math.isfinite(cooldown_seconds) and cooldown_seconds >= 0):
        raise ValueError(f"cooldown_seconds must be finite and >= 0, got {cooldown_seconds}")
    rate = _mapping(alert.get("rate"))
    family = rate.get("kind") if isinstance(rate.get("kind"), str) else alert.get("kind")
    if alert.get("session") is not None:
        family = "session"
    labels: dict[str, str] = {"alertname": alertnames.get(str(family), alertname)}
    pattern = _mapping(alert.get("pattern"))
    _put_label(labels, "pattern_id", _label_value(pattern.get("id")))
    cluster = _mapping(alert.get("cluster"))
    cluster_label = _label_value(cluster.get("label")) if isinstance(cluster.get("label"), str) else ""
    cluster_id = cluster.get("id")
    if not cluster_label and isinstance(cluster_id, int) and not isinstance(cluster_id, bool):
        cluster_label = str(cluster_id)
    _put_label(labels, "cluster", cluster_label)
    _put_label(labels, "detector", _label_value(alert.get("detector")))
    _put_label(labels, "model_id", _label_value(_mapping(alert.get("model")).get("id")))
    fields = _mapping(alert.get("fields"))
    taken = set(FIXED_LABELS)
    for field in label_fields:
        name = sanitise_label_name(field)
        if not name or name in taken:
            continue
        taken.add(name)
        _put_label(labels, name, _label_value(_field(fields, field)))

    annotations: dict[str, str] = {}
    text = alert.get("text")
    if isinstance(text, str):
        annotations["summary"] = _cut(text, TEXT_MAX_CHARS)
    template = pattern.get("template")
    if isinstance(template, str):
        annotations["template"] = _cut(template, TEXT_MAX_CHARS)
    score = _number(alert.get("score"))
    if score is not None:
        annotations["score"] = format_score(score)
    annotations["neighbours"] = format_neighbours(alert.get("neighbours"))
    if isinstance(alert.get("id"), str):
        annotations["alert_id"] = alert["id"]
    source = _mapping(alert.get("source"))
    if all(key in source for key in ("topic", "partition", "offset")):
        annotations["source"] = f"{source['topic']}/{source['partition']}/{source['offset']}"
    if rate:
        annotations["rate"] = format_rate(rate)
    value = _mapping(alert.get("value"))
    if value:
        annotations["value"] = _cut(format_value(value), TEXT_MAX_CHARS)
    session = _mapping(alert.get("session"))
    if session:
        annotations["session"] = (
            f"{_cut(str(session.get('key', '?')), LABEL_VALUE_MAX_CHARS)}: {session.get('events')} events, "
            f"{session.get('reason')}"
        )

    group = _mapping(alert.get("group"))
    detected = _parse_time(alert.get("detected_at"))
    starts: datetime | None
    ends: datetime | None
    if alert.get("kind") == "summary":
        suppressed = group.get("suppressed")
        if isinstance(suppressed, int) and not isinstance(suppressed, bool):
            annotations["suppressed"] = str(suppressed)
        window_start, window_end = group.get("window_start"), group.get("window_end")
        if isinstance(window_start, str) and isinstance(window_end, str):
            annotations["window"] = f"{window_start} .. {window_end}"
        starts = _parse_time(window_start) or detected
        ends = detected
    else:
        starts = detected
        ends = None if detected is None else detected + timedelta(seconds=cooldown_seconds)

    result: dict[str, Any] = {"labels": labels, "annotations": annotations}
    if starts is not None and ends is not None:
        result["startsAt"] = _iso(starts)
        result["endsAt"] = _iso(max(starts, ends))
    if generator_url:
        result["generatorURL"] = generator_url
    return result


def format_rate(rate: Mapping[str, Any]) -> str:
    """A rate alert's numbers for people: ``"412 events in a 60 s bucket, 18.5 expected"``, or
    ``"no event in 7 x 60 s, 129.5 expected"``."""
    bucket = _number(rate.get("bucket_seconds"))
    expected = _number(rate.get("expected"))
    seconds = "?" if bucket is None else f"{bucket:g}"
    wanted = "?" if expected is None else f"{expected:.1f}"
    if rate.get("kind") == "silence":
        return f"no event in {rate.get('buckets')} x {seconds} s, {wanted} expected"
    return f"{rate.get('observed')} events in a {seconds} s bucket, {wanted} expected"


def format_value(value: Mapping[str, Any]) -> str:
    """An unusual value for people: ``"slot 1 <NUM> = 30000: magnitude 30000 outside 5..199
    (1049 seen)"``, with what the alert's ``value.expected`` says normal looks like."""
    expected = _mapping(value.get("expected"))
    shown = f"slot {value.get('slot')} {value.get('placeholder', '')} = {value.get('value')!s}"
    feature = expected.get("feature")
    if not feature:
        return shown
    detail = f"{feature} {expected.get('observed', '')}".strip()
    normal = expected.get("range") or expected.get("values")
    if isinstance(normal, list) and len(normal) == 2 and "range" in expected:
        detail += f" outside {normal[0]}..{normal[1]}"
    elif isinstance(normal, list):
        detail += f" not among {', '.join(str(v) for v in normal[:5])}"
    seen = expected.get("seen")
    return f"{shown}: {detail}" + (f" ({seen} seen)" if seen is not None else "")


def sanitise_label_name(name: str) -> str:
    """``name`` as a Prometheus/Alertmanager label name: every character outside
    ``[a-zA-Z0-9_]`` becomes ``_``, and a leading digit gets a ``_`` prefix ("" stays "")."""
    cleaned = _LABEL_NAME_INVALID.sub("_", name)
    if cleaned[:1].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def format_score(score: float) -> str:
    """Two decimals ("1.42"); three significant digits beyond a million (a score of +inf is
    published as the largest double, whose 309 digits help nobody)."""
    if math.isfinite(score) and abs(score) < 1e6:
        return f"{score:.2f}"
    return f"{score:.3g}"


def format_neighbours(neighbours: Any) -> str:
    """One line per neighbour, ``"<similarity, 2 decimals>  <text>"``; "" when there are none.

    Each text is flattened to one line (whitespace runs become one space) and cut to 256
    characters, so the annotation stays a short list however long the neighbours are.
    Malformed entries are skipped.
    """
    if not isinstance(neighbours, Sequence) or isinstance(neighbours, str):
        return ""
    lines = []
    for neighbour in neighbours:
        if not isinstance(neighbour, Mapping):
            continue
        similarity = _number(neighbour.get("similarity"))
        text = neighbour.get("text")
        if similarity is None or not isinstance(text, str):
            continue
        flat = _WHITESPACE_RUN.sub(" ", text).strip()
        lines.append(f"{similarity:.2f}  {_cut(flat, NEIGHBOUR_TEXT_MAX_CHARS)}")
    return "\n".join(lines)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _field(fields: Mapping[str, Any], name: str) -> Any:
    """``fields[name]``, else the dotted path ``name`` walked through nested objects."""
    if name in fields:
        return fields[name]
    value: Any = fields
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _label_value(value: Any) -> str:
    """A str/int/bool as a label value cut to 128 characters; "" for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _cut(str(value), LABEL_VALUE_MAX_CHARS)
    if isinstance(value, str):
        return _cut(value, LABEL_VALUE_MAX_CHARS)
    return ""


def _put_label(labels: dict[str, str], name: str, value: str) -> None:
    if value:
        labels[name] = value


def _cut(text: str, limit: int) -> str:
    """``text`` itself when it fits, else its first ``limit - 1`` characters and "…"."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp ("...Z" or with an offset) as an aware datetime; None if unusable."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds, the format of the alert documents."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- delivery ----------------------------------------------------------------------------------


class _Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # connection refused/reset, time-out, 5xx, 408, 429
    REJECTED = "rejected"  # any other non-2xx answer: sending the same body again cannot help


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Makes a redirect an error: urllib would follow a 30x of a POST with a GET, and the GET's
    200 would read as delivered."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AlertmanagerSink:
    """Posts alert documents to Alertmanager from a bounded queue, off the Kafka loop.

    Call ``submit`` only after the Kafka transaction holding the alerts has committed: then
    Alertmanager never hears of an alert that Kafka does not have, and a redelivered batch
    (at-least-once) at worst posts an alert twice, which Alertmanager merges (same labels).

    * ``submit`` maps and enqueues, never blocks and never raises. When the queue holds
      ``queue_size`` alerts the oldest are dropped (and counted) to make room: the newest alerts
      are the ones someone can still act on.
    * One daemon thread (``start``) posts up to 500 queued alerts per request to
      ``<url>/api/v2/alerts`` with a ``timeout_s`` time-out per request. A connection error,
      time-out, 5xx, 408 or 429 is retried with the same batch, backing off from 0.5 s doubling to
      10 s, for up to ``max_retry_s``; then the batch is dropped (counted). A streak of failures
      is logged once, at WARNING, with the URL and cause; its end at INFO. Any other non-2xx
      answer (a 400 names an invalid alert) is logged with the response body and the batch is
      dropped at once: the same body would be refused again.
    * ``close`` lets the thread drain the queue for up to its ``timeout_s``, then gives up and
      counts what is left as dropped.

    ``metrics``, when given, gets ``anomaly_agent_alertmanager_posts_total{result}``,
    ``..._alerts_dropped_total`` and the ``..._queue`` gauge (queued + the batch being posted).
    Environment proxies (``https_proxy``, ``no_proxy``) apply, except to a loopback URL.
    """

    def __init__(
        self,
        url: str,
        *,
        label_fields: Sequence[str],
        alertname: str = DEFAULT_ALERTNAME,
        alertnames: Mapping[str, str] = DEFAULT_ALERTNAMES,
        cooldown_seconds: float,
        queue_size: int = 10000,
        timeout_s: float = 5.0,
        max_retry_s: float = 60.0,
        metrics: AgentMetrics | None = None,
        generator_url: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"alertmanager url must be http(s)://host[:port][/prefix], got {url!r}")
        if parsed.username is not None or parsed.password is not None:
            # They would end up in log lines; put a proxy with auth in front instead.
            raise ValueError("alertmanager url must not carry credentials (user:password@)")
        if queue_size < 1:
            raise ValueError(f"alertmanager queue_size must be >= 1, got {queue_size}")
        if not timeout_s > 0:
            raise ValueError(f"alertmanager timeout must be > 0 s, got {timeout_s}")
        if not max_retry_s >= 0:
            raise ValueError(f"alertmanager max_retry_s must be >= 0, got {max_retry_s}")
        if not (math.isfinite(cooldown_seconds) and cooldown_seconds >= 0):
            raise ValueError(f"cooldown_seconds must be finite and >= 0, got {cooldown_seconds}")
        if generator_url is not None:
            link = urllib.parse.urlsplit(generator_url)
            # Alertmanager answers 422 to a generatorURL that is no URI: refuse it at start-up
            # rather than have every alert rejected.
            if link.scheme not in ("http", "https") or not link.netloc or " " in generator_url:
                raise ValueError(f"generator_url must be an absolute http(s) URL, got {generator_url!r}")
        self.url = url.rstrip("/")
        self.endpoint = self.url + ALERTS_PATH
        self._label_fields = tuple(label_fields)
        self._alertname = alertname
        self._alertnames = dict(alertnames)
        self._cooldown_seconds = cooldown_seconds
        self._generator_url = generator_url
        self._queue_size = queue_size
        self._timeout_s = timeout_s
        self._max_retry_s = max_retry_s
        self._metrics = metrics
        proxies = urllib.request.ProxyHandler({} if _is_loopback(parsed.hostname) else None)
        self._opener = urllib.request.build_opener(proxies, _NoRedirect())
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": f"kafka-anomaly-agent/{__version__}",
        }

        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._close_deadline: float | None = None
        self._abandoned = False  # close gave up: the thread must stop and count nothing more
        # Log-once state of the worker thread (only it touches these).
        self._failing = False
        self._streak_posts = 0
        self._streak_dropped = 0
        self._overflowing = False  # guarded by _cond

    # -- public -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread (idempotent; a no-op after ``close``)."""
        with self._cond:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(target=self._run, name="alertmanager-sink", daemon=True)
            self._thread.start()

    def submit(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Queue ``alerts`` (alert-topic documents) for Alertmanager; returns at once.

        Never blocks on the network and never raises: a document the mapping cannot handle is
        logged and counted as dropped, a full queue drops its oldest alerts, and after ``close``
        everything submitted is dropped (counted).
        """
        try:
            mapped: list[dict[str, Any]] = []
            for alert in alerts:
                try:
                    mapped.append(self._map(alert))
                except Exception:
                    log.exception("alert cannot be mapped for Alertmanager; dropped")
                    self._count_dropped(1)
            if not mapped:
                return
            with self._cond:
                if self._closing:
                    dropped = len(mapped)
                else:
                    self._queue.extend(mapped)
                    dropped = max(0, len(self._queue) - self._queue_size)
                    for _ in range(dropped):  # oldest first; newer alerts are the actionable ones
                        self._queue.popleft()
                    self._cond.notify()
                    if dropped and not self._overflowing:
                        self._overflowing = True
                        log.warning(
                            "Alertmanager queue full (%d alerts, alertmanager.queue_size): dropping the "
                            "oldest; Alertmanager at %s is slow or unreachable (logged once until the "
                            "queue drains)",
                            self._queue_size,
                            self.url,
                        )
                self._update_gauge()
            self._count_dropped(dropped)
        except Exception:  # the Kafka loop must never see an exception from here
            log.exception("Alertmanager sink: submit failed; %d alerts dropped", len(alerts))
            self._count_dropped(len(alerts))

    def close(self, timeout_s: float) -> None:
        """Stop accepting alerts, let the thread post what is queued for up to ``timeout_s``
        seconds, then give up: alerts still queued or in flight are counted as dropped (an
        in-flight POST that Alertmanager accepted just after the deadline is counted too)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._close_deadline = time.monotonic() + max(0.0, timeout_s)
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout_s))
        with self._cond:
            left = len(self._queue) + self._in_flight
            self._queue.clear()
            self._in_flight = 0
            self._abandoned = True
            self._cond.notify_all()
            self._update_gauge()
        if left:
            log.warning(
                "%d alerts not delivered to Alertmanager at %s within %.1f s of shutdown; dropped",
                left,
                self.url,
                timeout_s,
            )
            self._count_dropped(left)

    # -- worker -----------------------------------------------------------------------------

    def _map(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        return alertmanager_alert(
            alert,
            label_fields=self._label_fields,
            alertname=self._alertname,
            cooldown_seconds=self._cooldown_seconds,
            generator_url=self._generator_url,
            alertnames=self._alertnames,
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._abandoned or not self._queue:
                    return  # closing with nothing left, or close gave up
                batch = [self._queue.popleft() for _ in range(min(BATCH_MAX_ALERTS, len(self._queue)))]
                self._in_flight = len(batch)
                self._update_gauge()
            try:
                done = self._deliver(batch)
            except Exception:  # a bug must not kill the thread and silently stall delivery
                log.exception("Alertmanager sink: delivering %d alerts failed; dropped", len(batch))
                done = True
                self._count_dropped(len(batch))
            with self._cond:
                if self._abandoned:
                    return
                if not done:  # close's deadline passed mid-retry: close counts the batch
                    return
                self._in_flight = 0
                if not self._queue:
                    self._overflowing = False
                self._update_gauge()

    def _deliver(self, batch: list[dict[str, Any]]) -> bool:
        """Posts ``batch`` until it is delivered, rejected or its retry time is up (True), or
        until close's deadline passes (False: the batch is still in flight, for close to count)."""
        body = json.dumps(batch, separators=(",", ":")).encode()
        give_up_at = time.monotonic() + self._max_retry_s
        backoff = BACKOFF_START_S
        while True:
            timeout = self._timeout_s
            deadline = self._close_deadline
            if deadline is not None:
                timeout = min(timeout, max(0.05, deadline - time.monotonic()))
            outcome, cause = self._post(body, timeout)
            if self._abandoned:  # close gave up meanwhile and counted the batch: stay quiet
                return False
            if outcome is _Outcome.DELIVERED:
                if self._failing:
                    log.info(
                        "Alertmanager at %s accepts alerts again after %d failed POSTs (%d alerts "
                        "dropped meanwhile)",
                        self.url,
                        self._streak_posts,
                        self._streak_dropped,
                    )
                    self._failing = False
                return True
            if outcome is _Outcome.REJECTED:
                log.warning(
                    "Alertmanager at %s rejected %d alerts, dropped: %s", self.endpoint, len(batch), cause
                )
                self._count_dropped(len(batch))
                return True
            if not self._failing:
                self._failing = True
                self._streak_posts = 0
                self._streak_dropped = 0
                log.warning(
                    "Alertmanager at %s: POST failed (%s); retrying with backoff for up to %.0f s per "
                    "batch, then dropping it (logged once until a POST succeeds)",
                    self.endpoint,
                    cause,
                    self._max_retry_s,
                )
            self._streak_posts += 1
            now = time.monotonic()
            delay = min(backoff, BACKOFF_MAX_S)
            backoff *= 2
            if now + delay > give_up_at:
                log.debug(
                    "Alertmanager at %s: %d alerts dropped after retries: %s", self.url, len(batch), cause
                )
                self._streak_dropped += len(batch)
                self._count_dropped(len(batch))
                return True
            with self._cond:
                if self._close_deadline is not None:
                    if now >= self._close_deadline:
                        return False
                    delay = min(delay, self._close_deadline - now)
                self._cond.wait(delay)
                if self._abandoned:
                    return False

    def _post(self, body: bytes, timeout: float) -> tuple[_Outcome, str]:
        request = urllib.request.Request(self.endpoint, data=body, headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            self._count_post(success=False)
            try:
                detail = exc.read(ERROR_BODY_MAX_BYTES).decode("utf-8", "replace").strip()
            except (OSError, http.client.HTTPException):
                detail = ""
            cause = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
            if exc.code >= 500 or exc.code in (408, 429):
                return _Outcome.RETRY, cause
            return _Outcome.REJECTED, cause
        except urllib.error.URLError as exc:
            self._count_post(success=False)
            return _Outcome.RETRY, str(exc.reason)
        except (OSError, http.client.HTTPException) as exc:  # time-outs, resets mid-response
            self._count_post(success=False)
            return _Outcome.RETRY, repr(exc)
        self._count_post(success=True)
        return _Outcome.DELIVERED, ""

    # -- metrics ----------------------------------------------------------------------------

    def _count_post(self, *, success: bool) -> None:
        if self._metrics is not None:
            self._metrics.alertmanager_posts.labels(result="success" if success else "failure").inc()

    def _count_dropped(self, count: int) -> None:
        if count and self._metrics is not None:
            self._metrics.alertmanager_alerts_dropped.inc(count)

    def _update_gauge(self) -> None:
        """Caller holds ``_cond``."""
        if self._metrics is not None:
            self._metrics.alertmanager_queue.set(len(self._queue) + self._in_flight)
