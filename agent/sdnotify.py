"""systemd's service notification protocol (sd_notify(3)) for ``Type=notify`` / ``notify-reload``.

The protocol is one newline-separated ``KEY=VALUE`` datagram sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET``: a filesystem path (``/run/systemd/notify``) or, with a leading ``@``, a name in
Linux's abstract namespace. That is a dozen lines over the standard library; the PyPI
``sdnotify`` package does the same and is unmaintained, so there is no dependency to carry.

The runner reads the environment and passes ``NOTIFY_SOCKET`` / ``WATCHDOG_USEC`` in; this module
never reads it, so it is testable and a no-op outside systemd (socket path None).

Notifications are best effort: a failed send is logged and reported as False, never raised, because
losing a status update must not take the agent down (systemd's own watchdog catches a dead one).
"""

from __future__ import annotations

import logging
import os
import socket
import time

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
