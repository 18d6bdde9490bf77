"""``anomaly-agent run``: settings → model → metrics/health servers → pipeline, plus process concerns.

What lives here and not in the pipeline: reading ``NOTIFY_SOCKET`` / ``WATCHDOG_USEC`` (the only
environment reads besides ``load_settings``), logging set-up, signal handling, the bundle watcher
thread, systemd notifications and exit codes. The pipeline knows nothing about processes.

Exit codes (sysexits.h, what systemd and operators expect of a daemon):

====  ==========================================================================================
0     stopped by SIGTERM/SIGINT after draining the in-flight batch
1     the shutdown did not finish within ``lifecycle.shutdown_grace_seconds`` (forced exit)
65    EX_DATAERR: the model bundle is invalid or tampered with (the message names the file)
69    EX_UNAVAILABLE: no broker reachable for ``lifecycle.broker_unavailable_exit_seconds``
70    EX_SOFTWARE: a Kafka client state the agent cannot recover from in-process, or a bug
75    EX_TEMPFAIL: a Kafka client call stayed blocked past its deadline and the client could not be
      replaced in-process (a consumer call, or replaced producers that keep hanging); a restart
      resumes from the committed offsets with fresh clients
77    EX_NOPERM: Kafka refused the agent's credentials or an operation it needs (a missing ACL);
      the message names the resource and what to grant
78    EX_CONFIG: invalid configuration, missing bundle directory, missing output topic, or a
      metrics/health port that cannot be bound
====  ==========================================================================================

Signals: SIGTERM/SIGINT stop after the in-flight batch (a second one exits at once); SIGHUP
reloads the bundle. A dedicated thread takes them from Python's signal wakeup fd, which the C-level
handler writes in whichever thread the kernel picked, so a stop request is seen at once whatever
the loop is blocked on (a Python signal handler only runs between bytecodes of the main thread,
never while it sits in a C call, and never if that call hangs); a timer then guarantees the exit
within ``lifecycle.shutdown_grace_seconds``.

Reloads (SIGHUP or, with ``model.watch``, a changed ``manifest.json``) are loaded and verified on
the watcher thread and swapped in by the loop between batches; a bad bundle is refused, logged
and counted in ``anomaly_agent_reloads_total{result="failure"}``, and the running model stays.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from agent.config import EXIT_CONFIG, ConfigError, EventFormat, Settings, load_settings
from agent.health import HealthServer, HealthState, serve_health
from agent.kafka.calls import CallHung, ClientsExhausted
from agent.kafka.permissions import KafkaPermissionError
from agent.model.bundle import MANIFEST, BundleError
from agent.pipeline import ActiveModel, BrokerUnavailableError, Pipeline, PipelineError, load_model
from agent.sdnotify import SystemdNotifier, WatchdogPinger, watchdog_interval
from exporters.metrics import AgentMetrics, ReloadResult

log = logging.getLogger("agent.runner")

EXIT_OK = 0
EXIT_GRACE_EXCEEDED = 1
EXIT_DATAERR = 65
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# Not a signal number: written to the wakeup socket by ``SignalThread.stop`` to end the thread.
_STOP_READING = 0


class _OneLineFormatter(logging.Formatter):
    """``2026-11-22T17:50:08.123Z INFO agent.pipeline: message``, always one line (tracebacks
    included: newlines become `` | ``), so log shippers keep a record together."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


class RepeatFilter(logging.Filter):
    """Passes one record per message shape (digits ignored) per ``window_s``; the next one that
    passes says how many were suppressed. librdkafka logs every reconnect attempt during a
    broker outage, several per second; the journal needs one line per half minute."""

    MAX_SHAPES = 1_000

    def __init__(self, window_s: float = 30.0) -> None:
        super().__init__()
        self._window = window_s
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, re.sub(r"\d+", "#", record.getMessage()))
        now = time.monotonic()
        last, suppressed = self._seen.get(key, (None, 0))
        if last is not None and now - last < self._window:
            self._seen[key] = (last, suppressed + 1)
            return False
        if len(self._seen) >= self.MAX_SHAPES:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if suppressed:
            record.msg, record.args = f"{record.getMessage()} ({suppressed} similar suppressed)", None
        return True


def setup_logging(level: str) -> None:
    """Single-line records on stderr at ``level`` (journald and container runtimes collect stderr);
    librdkafka's own log lines are de-duplicated by ``RepeatFilter``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _OneLineFormatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    kafka_log = logging.getLogger("librdkafka")
    kafka_log.filters[:] = [RepeatFilter()]


class BundleWatcher:
    """Reloads the bundle on request (SIGHUP) or when ``manifest.json`` changes (``model.watch``).

    Runs on its own daemon thread so loading (hash checks, onnxruntime session) never stalls the
    loop; a verified model is handed to ``on_loaded`` (``Pipeline.offer_model``). A changed
    manifest is reloaded once per change of its stat signature: a bundle that failed is retried
    only when it changes again (or on SIGHUP), not every interval.
    """

    def __init__(
        self,
        path: Path,
        *,
        current_sha256: str,
        on_loaded: Callable[[ActiveModel], None],
        metrics: AgentMetrics,
        notifier: SystemdNotifier,
        watch: bool,
        interval_s: float,
        intra_op_threads: int,
    ) -> None:
        self._path = path
        self._current = current_sha256
        self._on_loaded = on_loaded
        self._metrics = metrics
        self._notifier = notifier
        self._watch = watch
        self._interval = interval_s
        self._threads = intra_op_threads
        self._wake = threading.Event()
        self._forced = False
        self._stopped = False
        self._last_signature: tuple[int, int, int] | None = self._signature()
        self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def trigger(self) -> None:
        """Reload now (SIGHUP); safe from a signal handler: the loop never waits on this event."""
        self._forced = True
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = (self._path / MANIFEST).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval if self._watch else None)
            self._wake.clear()
            if self._stopped:
                return
            forced, self._forced = self._forced, False
            if forced:
                self._reload(forced=True)
                continue
            signature = self._signature()
            if signature is None or signature == self._last_signature:
                continue
            self._last_signature = signature
            try:
                digest = hashlib.sha256((self._path / MANIFEST).read_bytes()).hexdigest()
            except OSError:
                continue  # replaced right now; the next poll sees the new signature
            if digest != self._current:
                self._reload(forced=False)

    def _reload(self, *, forced: bool) -> None:
        if forced:
            self._notifier.reloading()
        log.info("reloading the model bundle %s (%s)", self._path, "SIGHUP" if forced else "manifest changed")
        try:
            model = load_model(self._path, intra_op_threads=self._threads)
        except BundleError as exc:
            self._metrics.reloads.labels(result=ReloadResult.FAILURE.value).inc()
            log.error("reload refused, the running model stays: %s", exc)
        else:
            self._current = model.bundle.sha256
            self._on_loaded(model)
            self._metrics.reloads.labels(result=ReloadResult.SUCCESS.value).inc()
            log.info(
                "new model verified model=%s sha256=%s; swapping it in before the next batch",
                model.bundle.model_id,
                model.bundle.sha256[:12],
            )
        finally:
            if forced:
                self._notifier.ready()


class _ReadyHook:
    """Per-iteration systemd duty: READY=1 (and a status line) once the agent is ready. The
    watchdog pings come from ``WatchdogPinger``'s own thread, not from here: a long batch must not
    delay them."""

    def __init__(self, notifier: SystemdNotifier, health: HealthState) -> None:
        self._notifier = notifier
        self._health = health
        self.ready_sent = False

    def __call__(self) -> None:
        if not self.ready_sent and self._health.ready()[0]:
            self.ready_sent = True
            self._notifier.ready()
            self._notifier.status("consuming")
            log.info("ready: model loaded, group joined")


def cmd_run(args: argparse.Namespace) -> int:
    """``anomaly-agent run [--config FILE]``: load the settings and run until stopped."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"anomaly-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    return run_agent(settings)


class SignalThread:
    """Takes SIGTERM/SIGINT/SIGHUP on a thread of its own, whichever thread the kernel delivers
    them to (see the module docstring).

    A process-directed signal goes to any thread that does not block it. ``block`` blocks them in
    the calling (main) thread and so in every thread started after it (onnxruntime's,
    librdkafka's, the HTTP servers'), which are then never interrupted by one; threads that already
    ran (numpy's BLAS pool starts at import) still take them. Wherever it lands, Python's C-level
    handler writes the signal number to the wakeup fd (``signal.set_wakeup_fd``) at once, in that
    thread, and this thread reads it and dispatches: a stop request is seen even while the loop
    sits in a native call that never returns (the Python-level handlers, which would only run on
    the main thread between bytecodes, do nothing). ``stop`` ends the thread and restores the
    mask, the wakeup fd and the handlers.
    """

    def __init__(self, on_stop: Callable[[int], None], on_reload: Callable[[], None]) -> None:
        self._on_stop = on_stop
        self._on_reload = on_reload
        self._previous: set[int | signal.Signals] | None = None
        self._previous_wakeup: int | None = None
        self._handlers: dict[int, Any] = {}
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="signals", daemon=True)

    def block(self) -> None:
        for signum in _HANDLED_SIGNALS:
            self._handlers[signum] = signal.signal(signum, _ignore)  # dispatched from the wakeup fd
        self._previous_wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)

    def _dispatch(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self._on_reload()
        else:
            self._on_stop(signum)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)  # this thread may take them
        while True:
            for signum in self._reader.recv(64):
                if signum == _STOP_READING:
                    return
                if signum in _HANDLED_SIGNALS:
                    self._dispatch(signum)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._writer.send(bytes([_STOP_READING]))
            self._thread.join(timeout=5)
        if self._previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._previous)
            self._previous = None
        if self._previous_wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            self._previous_wakeup = None
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()
        self._reader.close()
        self._writer.close()


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: nothing (``SignalThread`` dispatches from the wakeup fd)."""


def run_agent(settings: Settings) -> int:
    """Run the agent with ``settings`` in this process until a signal or a fatal condition;
    returns the exit code (see the module docstring)."""
    pending: list[int] = []  # signals that arrive before the pipeline exists
    handlers: dict[str, Callable[..., None]] = {}
    signals = SignalThread(
        on_stop=lambda signum: handlers["stop"](signum) if "stop" in handlers else pending.append(signum),
        on_reload=lambda: handlers["reload"]() if "reload" in handlers else None,
    )
    signals.block()
    signals.start()
    try:
        return _run_agent(settings, signals, pending, handlers)
    finally:
        signals.stop()


def _run_agent(
    settings: Settings,
    signals: SignalThread,
    pending: list[int],
    handlers: dict[str, Callable[..., None]],
) -> int:
    notifier = SystemdNotifier(os.environ.get("NOTIFY_SOCKET"))
    watchdog_every = watchdog_interval(os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID"))

    bundle_path = settings.model.bundle
    if not bundle_path.is_dir():
        log.error("model.bundle %s: no such directory; train a bundle or fix the path", bundle_path)
        return EXIT_CONFIG
    try:
        model = load_model(bundle_path, intra_op_threads=settings.model.intra_op_threads)
    except BundleError as exc:
        log.error("refusing to start: %s", exc)
        return EXIT_DATAERR
    log.info(
        "model loaded model=%s sha256=%s detector=%s from %s",
        model.bundle.model_id,
        model.bundle.sha256[:12],
        model.bundle.detector_name,
        bundle_path,
    )

    if settings.events.format is EventFormat.JSON and model.bundle.text_prep.fields != (
        settings.events.text_field,
    ):
        log.warning(
            "events.text_field is %r but the model was trained on the field(s) %s; events are scored "
            "on %r, check that this is the same text",
            settings.events.text_field,
            ", ".join(model.bundle.text_prep.fields),
            settings.events.text_field,
        )

    metrics = AgentMetrics(batch_max_size=settings.batch.max_size)
    health = HealthState(settings.health.stall_seconds)
    servers: list[Callable[[], None]] = []
    try:
        if settings.metrics.enabled:
            metrics_server, _ = metrics.serve(settings.metrics.host, settings.metrics.port)
            servers.extend((metrics_server.shutdown, metrics_server.server_close))
            log.info("metrics on http://%s:%d/metrics", settings.metrics.host, metrics_server.server_port)
        if settings.health.enabled:
            health_server: HealthServer = serve_health(
                health, settings.health.host, settings.health.port, settings.health.stall_seconds
            )
            servers.append(health_server.shutdown)
            log.info("health on http://%s:%d/healthz and /readyz", settings.health.host, health_server.port)
    except OSError as exc:
        log.error("cannot serve metrics/health (%s); change metrics.port / health.port", exc)
        for shutdown in servers:
            shutdown()
        return EXIT_CONFIG

    pipeline = Pipeline(
        settings, model, metrics=metrics, health=health, on_iteration=_ReadyHook(notifier, health)
    )
    pinger = (
        None
        if watchdog_every is None
        else WatchdogPinger(notifier, watchdog_every, 2 * watchdog_every, health.seconds_since_beat)
    )
    watcher = BundleWatcher(
        bundle_path,
        current_sha256=model.bundle.sha256,
        on_loaded=pipeline.offer_model,
        metrics=metrics,
        notifier=notifier,
        watch=settings.model.watch,
        interval_s=settings.model.watch_interval_seconds,
        intra_op_threads=settings.model.intra_op_threads,
    )
    stopping = threading.Event()
    grace = settings.lifecycle.shutdown_grace_seconds

    def force_exit() -> None:
        log.error("shutdown took longer than lifecycle.shutdown_grace_seconds = %g; exiting now", grace)
        os._exit(EXIT_GRACE_EXCEEDED)

    def on_stop_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_GRACE_EXCEEDED)
        stopping.set()
        log.info("%s: finishing the in-flight batch, then stopping", signal.Signals(signum).name)
        health.set_stopping()
        notifier.stopping()
        pipeline.request_stop()
        timer = threading.Timer(grace, force_exit)
        timer.daemon = True
        timer.start()

    handlers["reload"] = watcher.trigger
    handlers["stop"] = on_stop_signal
    for signum in pending:
        on_stop_signal(signum)
    watcher.start()
    if pinger is not None:
        pinger.start()
    code = EXIT_OK
    try:
        pipeline.run()
    except BrokerUnavailableError as exc:
        log.error("giving up: %s", exc)
        code = EXIT_UNAVAILABLE
    except ConfigError as exc:
        log.error("refusing to run: %s", exc)
        code = EXIT_CONFIG
    except PipelineError as exc:
        log.error("stopping: %s; a restart resumes from the committed offsets", exc)
        code = EXIT_SOFTWARE
    except KafkaPermissionError as exc:
        log.error("refusing to run: %s", exc)
        code = EXIT_NOPERM
    except (CallHung, ClientsExhausted) as exc:
        log.error("stopping: %s; a restart resumes from the committed offsets with fresh clients", exc)
        code = EXIT_TEMPFAIL
    except Exception:
        # A bug, not an input problem (bad records are dead-lettered): say so in one log record
        # and exit non-zero; nothing of the batch in hand was committed.
        log.exception("stopping on an unexpected error; a restart resumes from the committed offsets")
        code = EXIT_SOFTWARE
    finally:
        health.set_stopping()
        if not stopping.is_set():
            notifier.stopping()
        watcher.stop()
        pipeline.close()
        if pinger is not None:
            pinger.stop()
        for shutdown in servers:
            shutdown()
        notifier.close()
    log.info("stopped (exit code %d)", code)
    return code
