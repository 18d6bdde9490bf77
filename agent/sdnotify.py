"""systemd's service notification protocol (sd_notify(3)) for ``Type=notify`` / ``notify-reload``.

The protocol is one newline-separated ``KEY=VALUE`` datagram sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET``: a filesystem path (``/run/systemd/notify``) or, with a leading ``@``, a name in
Linux's abstract namespace. That is a dozen lines over the standard library; the PyPI
``sdnotify`` package does the same and is unmaintained, so there is no dependency to carry.

The runner reads the environment and passes ``NOTIFY_SOCKET`` / ``WATCHDOG_USEC`` in; this module
never reads it, so it is testable and a no-op outside systemd (socket path None).

**The watchdog means "stuck", not "busy".** ``WatchdogPinger`` sends ``WATCHDOG=1`` from a thread of
its own every half ``WatchdogSec``, as long as the loop's progress stamp moved within the last
``WatchdogSec``. The loop moves the stamp at every iteration, after every stage of a batch, after
every embedder micro-batch and detector call, and while it waits on a Kafka call that is still
within its deadline; so a batch that takes minutes to embed keeps the pings coming, and only a loop
that made no progress at all for ``WatchdogSec`` (a deadlock, a native call that hangs) stops them:
systemd then kills it between ``WatchdogSec`` and twice that after it got stuck.

Notifications are best effort: a failed send is logged and reported as False, never raised, because
losing a status update must not take the agent down (systemd's own watchdog catches a dead one).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to ``socket_path`` (the value of ``$NOTIFY_SOCKET``); no-op when None.

    An address systemd may use but this class does not speak (``vsock:...``) or a malformed one is
    logged once and notifications are disabled, as sd_notify(3) treats it as "not supported".
    """

    def __init__(self, socket_path: str | None) -> None:
        self._address: str | None = None
        self._socket: socket.socket | None = None
        if not socket_path:
            return
        if socket_path.startswith("@"):
            self._address = "\0" + socket_path[1:]
        elif socket_path.startswith("/"):
            self._address = socket_path
        else:
            log.warning(
                "NOTIFY_SOCKET=%r is not an absolute path or @abstract name; not notifying systemd",
                socket_path,
            )
            return
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram; True when systemd's socket accepted it."""
        if self._socket is None or self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            self._socket.sendto(message, self._address)
        except OSError as exc:
            log.warning("systemd notification %r failed: %s", assignments[0] if assignments else "", exc)
            return False
        return True

    def ready(self) -> bool:
        """Start-up (or a reload) finished: systemd moves the unit to active."""
        return self.notify("READY=1")

    def watchdog(self) -> bool:
        """Keep-alive for ``WatchdogSec=``; send every ``watchdog_interval`` seconds."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown began (the drain may take up to ``lifecycle.shutdown_grace_seconds``)."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """A reload (model hot swap) began; send ``ready()`` when it is done.

        ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, µs) is required by ``Type=notify-reload`` (systemd 253+)
        to match the reload to the SIGHUP it sent.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status`` (newlines become spaces)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(watchdog_usec: str | None, watchdog_pid: str | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` as sd_watchdog_enabled(3)
    recommends, or None when the watchdog is off (unset, empty, 0 or malformed).

    When ``watchdog_pid`` (``$WATCHDOG_PID``) is given and names another process, the watchdog is
    not ours (an inherited environment) and the answer is None.
    """
    if watchdog_pid and watchdog_pid.strip() != str(os.getpid()):
        return None
    if not watchdog_usec:
        return None
    try:
        usec = int(watchdog_usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog pings disabled", watchdog_usec)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class WatchdogPinger:
    """Sends ``WATCHDOG=1`` every ``every_s`` seconds from a daemon thread while
    ``progress_age()`` (seconds since the loop last made progress) is below ``stall_s``.

    The runner uses ``every_s`` = half of ``WatchdogSec`` (``watchdog_interval``) and ``stall_s`` =
    ``WatchdogSec``: a working loop, however slow its batch, is never killed; a loop stuck for
    ``stall_s`` stops the pings, which says so once in the log, and systemd restarts the unit.
    The first ping goes out at ``start``. ``pings`` and ``withheld`` count what was decided.
    """

    def __init__(
        self, notifier: SystemdNotifier, every_s: float, stall_s: float, progress_age: Callable[[], float]
    ) -> None:
        if every_s <= 0 or stall_s <= 0:
            raise ValueError(f"every_s and stall_s must be > 0, got {every_s} and {stall_s}")
        self._notifier = notifier
        self._every = every_s
        self._stall = stall_s
        self._progress_age = progress_age
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self.pings = 0
        self.withheld = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)

    def tick(self) -> bool:
        """One decision: ping when the loop made progress within ``stall_s``; True when it pinged."""
        age = self._progress_age()
        if age < self._stall:
            if self.withheld:
                log.warning("the loop makes progress again; watchdog pings resumed")
                self.withheld = 0
            self.pings += 1
            self._notifier.watchdog()
            return True
        if not self.withheld:
            log.error(
                "the loop made no progress for %.1f s (WatchdogSec %.1f s): watchdog pings withheld, "
                "systemd will restart the agent",
                age,
                self._stall,
            )
        self.withheld += 1
        return False

    def _run(self) -> None:
        while True:
            self.tick()
            if self._stopped.wait(self._every):
                return
