"""Calling librdkafka so that no call can hang the agent: deadlines enforced outside the C call.

librdkafka's blocking calls take a timeout, but some do not keep it: after a broker restart,
``send_offsets_to_transaction`` was measured blocking for 170 s with a 10 s timeout (the
coordinator-request timeout is never checked, librdkafka #5456; a cached, decommissioned
coordinator is never re-queried, #5511), and while the main thread sits in a C call Python runs
no signal handler and no watchdog ping. So every blocking call of a client runs on that client's
own thread, and the caller waits for it in short slices with a deadline of its own:

- between slices the caller's ``tick`` runs (outage policy, shutdown deadline, watchdog ping);
  an exception from ``tick`` propagates and leaves the call running on the worker;
- a call not back ``DEADLINE_MARGIN_S`` after the timeout it was given raises ``CallHung``: the
  client is then *retired* — never called again, its thread left to finish (or not) on its own —
  and the caller replaces it (a new transactional producer's ``init_transactions`` fences the
  old one). Every retired client, hung or not, is destroyed on a reaper thread once its last
  call returned, so ``rd_kafka_destroy`` never blocks the loop either.

Retired clients stuck in a call still hold librdkafka threads and sockets. ``MAX_ABANDONED`` of
them may be stuck at once; one more raises ``ClientsExhausted``, which the runner turns into exit
code 75 (EX_TEMPFAIL) so that the supervisor restarts the process with fresh clients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger(__name__)

T = TypeVar("T")

# The timeout handed to each blocking librdkafka call. Short on purpose: transactional calls and
# commits that time out are retriable and simply called again, so a slow cluster costs retries,
# not failures, and a call that ignores its timeout is noticed within seconds.
CALL_TIMEOUT_S = 5.0
# A call still running this long after its own timeout is hung.
DEADLINE_MARGIN_S = 2.0
# How often the caller wakes up while a call runs (signals, watchdog, outage policy).
WAIT_SLICE_S = 0.2
# Abandoned clients whose hung call has not returned yet, beyond which the process gives up.
MAX_ABANDONED = 3

Tick = Callable[[], None]


class CallHung(Exception):
    """A librdkafka call did not return within its deadline; its client must not be used again."""

    def __init__(self, client: str, what: str, waited_s: float, note: str = "") -> None:
        super().__init__(f"{client}: {what} did not return within {waited_s:.1f} s{note}")
        self.client = client
        self.what = what
        self.waited_s = waited_s


class ClientsExhausted(Exception):
    """Too many abandoned Kafka clients are still stuck in calls: restart the process."""


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries, if any."""
    first = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return first if isinstance(first, KafkaError) else None


class _Call:
    """One call running on its own daemon thread (daemon: a hung call must never keep the
    interpreter from exiting, which a ``ThreadPoolExecutor`` worker would)."""

    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        self._fn: Callable[[], Any] | None = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            assert self._fn is not None
            self.result = self._fn()
        except BaseException as exc:  # handed to the caller, who re-raises it
            self.error = exc
        finally:
            self._fn = None  # the client's last reference may go here, on this thread
            self.done.set()


class _Graveyard:
    """Retired clients: each is destroyed on a reaper thread of its own, after its running call
    (if any) returned, so that ``rd_kafka_destroy`` never runs on the loop's thread."""

    # The reaper holds its reference this long before dropping it, so that it is the last holder
    # (the retiring caller's local references are gone by then) and the handle is destroyed there.
    REAP_DELAY_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stuck: list[_Call] = []

    def bury(self, running: _Call | None, client: object) -> None:
        hung = running is not None and not running.done.is_set()
        if hung:
            with self._lock:
                self._stuck = [c for c in self._stuck if not c.done.is_set()]
                if len(self._stuck) >= MAX_ABANDONED:
                    raise ClientsExhausted(
                        f"{len(self._stuck)} abandoned Kafka clients are still stuck in calls; "
                        "restarting the process is the remaining remedy"
                    )
                assert running is not None
                self._stuck.append(running)
        holder = [client]
        del client
        threading.Thread(target=self._reap, args=(running, holder), name="kafka-reaper", daemon=True).start()

    def _reap(self, running: _Call | None, holder: list[object]) -> None:
        if running is not None:
            running.done.wait()
        time.sleep(self.REAP_DELAY_S)
        holder.clear()

    def stuck(self) -> int:
        with self._lock:
            return sum(1 for c in self._stuck if not c.done.is_set())


GRAVEYARD = _Graveyard()


class ClientCalls:
    """Runs one client's blocking calls, one at a time, each on a thread of its own with a deadline.

    ``name`` names the client in logs, errors and thread names ("producer", "consumer"). Calls are
    made from one thread (the loop's) and never overlap: a call returns, raises, or hangs — and a
    hung client is never called again.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._running: _Call | None = None
        self.hung = False

    def call(self, what: str, fn: Callable[[], T], *, timeout_s: float, tick: Tick | None = None) -> T:
        """``fn()``'s result or exception, or ``CallHung`` once ``timeout_s + DEADLINE_MARGIN_S``
        passed (``timeout_s`` is what ``fn`` passes to librdkafka). ``tick`` runs every
        ``WAIT_SLICE_S`` meanwhile; what it raises propagates, the call left running."""
        if self.hung:
            raise CallHung(self.name, what, 0.0, " (the client was retired after an earlier call hung)")
        running = self._running = _Call(f"kafka-{self.name}-{what}", fn)
        start = time.monotonic()
        deadline = start + timeout_s + DEADLINE_MARGIN_S
        while not running.done.wait(max(0.0, min(WAIT_SLICE_S, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                self.hung = True
                raise CallHung(self.name, what, time.monotonic() - start)
            if tick is not None:
                tick()
        self._running = None
        if running.error is not None:
            raise running.error
        result: T = running.result
        return result

    def retire(self, client: object) -> None:
        """Never use this client again; destroy it off this thread once its running call (if any)
        returned. Raises ``ClientsExhausted`` when too many retired clients are stuck in calls."""
        self.hung = True
        running, self._running = self._running, None
        GRAVEYARD.bury(running, client)

    def close(self, what: str, fn: Callable[[], None], client: object, *, timeout_s: float) -> None:
        """Run a closing call (``flush``, ``close``) within ``timeout_s``, then retire ``client``;
        never raises: the process is stopping or replacing the client anyway."""
        try:
            if not self.hung:
                self.call(what, fn, timeout_s=timeout_s)
        except CallHung as exc:
            log.warning("%s; leaving it behind", exc)
        except KafkaException as exc:
            log.warning("%s %s failed: %s", self.name, what, kafka_error(exc) or exc)
        try:
            self.retire(client)
        except ClientsExhausted as exc:
            log.warning("%s", exc)
