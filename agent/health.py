"""Liveness and readiness: the loop reports, an HTTP endpoint answers probes.

``/healthz`` (liveness) answers "is the loop still turning, and getting work done?": the loop
calls ``HealthState.beat()`` every iteration, including idle polls that return nothing, and
``progress()`` inside long ones (after each stage and each embedder micro-batch), so a quiet topic
and a slow batch are healthy and a stuck loop (deadlocked, wedged in a native call) fails. The
systemd watchdog follows the same stamp (``seconds_since_beat``; docs/operations.md). A loop that turns
but cannot commit — records in hand, every batch aborted and retried — fails too once that has
lasted ``stall_seconds`` while the broker is reachable. During a broker outage it stays healthy:
restarting the process would not bring the broker back (readiness fails instead, and the outage
policy decides when to exit), so an outage does not cause a restart storm.

``/readyz`` (readiness) answers "is this instance doing its job?": model loaded, consumer group
joined, broker reachable, and not shutting down. Joining the group, not owning partitions, is the
signal on purpose: with more agents than partitions some members legitimately own none and are
hot standbys that take over on the next rebalance; calling them unready would stall rolling
updates that wait for readiness. Whether partitions are assigned is still reported in the detail.

Both endpoints return JSON detail with 200 (ok) or 503 (not ok).
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class HealthState:
    """Thread-safe flags the loop sets and the probe server reads.

    The creation time counts as the first beat, so start-up (loading the model, joining the group)
    gets ``stall_seconds`` of grace before liveness can fail. Times are ``time.monotonic()``.
    """

    def __init__(self, stall_seconds: float = 60.0) -> None:
        if stall_seconds <= 0:
            raise ValueError(f"stall_seconds must be > 0, got {stall_seconds}")
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._last_beat = time.monotonic()
        self._beats = 0
        self._model_loaded = False
        self._group_joined = False
        self._assigned = False
        self._broker_reachable = False
        self._stopping = False
        self._pending_since: float | None = None
        self._last_commit: float | None = None

    def beat(self, now: float | None = None) -> None:
        """The loop completed an iteration (idle polls count): progress, and one more iteration."""
        with self._lock:
            self._last_beat = time.monotonic() if now is None else now
            self._beats += 1

    def progress(self) -> None:
        """The loop made progress inside an iteration: a stage of a batch or an embedder
        micro-batch finished, or a Kafka call it waits on is still within its deadline. Cheap (a
        lock and a clock read): the loop calls it many times per batch."""
        with self._lock:
            self._last_beat = time.monotonic()

    def seconds_since_beat(self, now: float | None = None) -> float:
        """How long ago the loop last made progress (the systemd watchdog's question)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return now - self._last_beat

    def work_pending(self, now: float | None = None) -> None:
        """The loop holds records it has not committed yet (kept from the first such poll until a
        commit or an empty poll, so retries of one failing batch do not reset it)."""
        with self._lock:
            if self._pending_since is None:
                self._pending_since = time.monotonic() if now is None else now

    def work_committed(self, now: float | None = None) -> None:
        """A batch committed: nothing pending."""
        with self._lock:
            self._pending_since = None
            self._last_commit = time.monotonic() if now is None else now

    def work_idle(self) -> None:
        """A poll returned nothing: nothing pending."""
        with self._lock:
            self._pending_since = None

    def set_model_loaded(self, loaded: bool) -> None:
        with self._lock:
            self._model_loaded = loaded

    def set_group_joined(self, joined: bool) -> None:
        """The consumer is a member of its group (set on the first assignment callback, even an
        empty one; cleared when the consumer leaves or loses membership)."""
        with self._lock:
            self._group_joined = joined

    def set_assigned(self, assigned: bool) -> None:
        """Whether this member owns at least one partition: reported, not required for readiness."""
        with self._lock:
            self._assigned = assigned

    def set_broker_reachable(self, reachable: bool) -> None:
        with self._lock:
            self._broker_reachable = reachable

    def set_stopping(self) -> None:
        """Shutdown began: report unready so load balancers and rollouts stop counting on us."""
        with self._lock:
            self._stopping = True

    def healthy(
        self, now: float | None = None, stall_seconds: float | None = None
    ) -> tuple[bool, dict[str, Any]]:
        """Live when the last beat is at most ``stall_seconds`` (default: the constructor's) old and
        records have not waited longer than that for a commit while the broker is reachable."""
        limit = self.stall_seconds if stall_seconds is None else stall_seconds
        now = time.monotonic() if now is None else now
        with self._lock:
            since = now - self._last_beat
            beats = self._beats
            pending = None if self._pending_since is None else now - self._pending_since
            reachable = self._broker_reachable
            last_commit = self._last_commit
        turning = since <= limit
        committing = pending is None or pending <= limit or not reachable
        ok = turning and committing
        return ok, {
            "status": "ok" if ok else ("stalled" if not turning else "not_committing"),
            "seconds_since_progress": round(since, 3),
            "seconds_pending_without_commit": None if pending is None else round(pending, 3),
            "seconds_since_commit": None if last_commit is None else round(now - last_commit, 3),
            "stall_seconds": limit,
            "iterations": beats,
        }

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the model is loaded, the group joined, the broker reachable and not stopping."""
        with self._lock:
            checks = {
                "model_loaded": self._model_loaded,
                "group_joined": self._group_joined,
                "broker_reachable": self._broker_reachable,
                "not_stopping": not self._stopping,
            }
            assigned = self._assigned
        ok = all(checks.values())
        return ok, {
            "status": "ok" if ok else "not_ready",
            "checks": checks,
            "failing": [name for name, passed in checks.items() if not passed],
            "partitions_assigned": assigned,
        }


class HealthServer(ThreadingHTTPServer):
    """Serves ``GET /healthz`` and ``GET /readyz`` from a daemon thread; ``shutdown()`` stops it
    and closes the socket. ``port`` is the bound port (useful when asked for port 0)."""

    daemon_threads = True

    def __init__(self, state: HealthState, host: str, port: int, stall_seconds: float) -> None:
        self.state = state
        self.stall_seconds = stall_seconds
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _HealthHandler)
        self.thread = threading.Thread(target=self.serve_forever, name="health-http", daemon=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN by reverse DNS, which can hang for seconds
        # on hosts without DNS; the name is only used for CGI environments we do not have.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()
        self.thread.join(timeout=5)


class _HealthHandler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok, detail = self.server.state.healthy(stall_seconds=self.server.stall_seconds)
        elif path == "/readyz":
            ok, detail = self.server.state.ready()
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"unknown path {path!r}; try /healthz or /readyz"})
            return
        self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, detail)

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes hit these endpoints every few seconds; access logs at DEBUG only.
        log.debug("health %s - %s", self.address_string(), format % args)


def serve_health(state: HealthState, host: str, port: int, stall_seconds: float) -> HealthServer:
    """Start the probe server on ``host:port`` (0 = any free port) and return it, already serving."""
    server = HealthServer(state, host, port, stall_seconds)
    server.thread.start()
    return server
