"""SystemdNotifier against a real AF_UNIX datagram socket, as systemd's manager listens."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import SystemdNotifier, WatchdogPinger, watchdog_interval


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket on a filesystem path (short: sun_path holds 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield sock, path
        finally:
            sock.close()


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_stopping_status(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier(path)
    assert notifier.enabled
    assert notifier.ready()
    assert receive(sock) == ["READY=1"]
    assert notifier.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]
    assert notifier.status("consuming 3 partitions\nmodel shop-1")
    assert receive(sock) == ["STATUS=consuming 3 partitions model shop-1"]
    assert notifier.stopping()
    assert receive(sock) == ["STOPPING=1"]
    notifier.close()
    assert not notifier.ready()


def test_reloading_carries_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert SystemdNotifier(path).reloading()
    reloading, monotonic = receive(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading == "RELOADING=1"
    key, value = monotonic.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_namespace_address() -> None:
    name = f"kaa-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert SystemdNotifier("@" + name).ready()
        assert receive(sock) == ["READY=1"]
    finally:
        sock.close()


def test_no_socket_is_a_silent_no_op() -> None:
    for value in (None, ""):
        notifier = SystemdNotifier(value)
        assert not notifier.enabled
        assert not notifier.ready() and not notifier.watchdog() and not notifier.status("x")


def test_unsupported_address_disables_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        notifier = SystemdNotifier("vsock:2:1234")
    assert not notifier.enabled and not notifier.ready()
    assert "vsock:2:1234" in caplog.text


def test_send_failure_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        notifier = SystemdNotifier(str(Path(directory) / "nobody-listens"))
        with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
            assert notifier.ready() is False
    assert "READY=1" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("1000000", "ours", 0.5),
        ("30000000", "another", None),
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    # The pid is resolved here, not in the parameters: test ids must be the same in every xdist worker.
    resolved = {"ours": str(os.getpid()), "another": str(os.getpid() + 1)}.get(pid or "", pid)
    assert watchdog_interval(usec, resolved) == expected


def test_watchdog_pings_while_the_loop_progresses_and_withholds_when_stuck(
    listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The decision itself, on a controlled progress age: busy (however long the batch) pings,
    no progress for ``stall_s`` withholds (logged once), progress again resumes."""
    sock, path = listener
    age = [0.0]
    pinger = WatchdogPinger(SystemdNotifier(path), every_s=30.0, stall_s=60.0, progress_age=lambda: age[0])
    for seconds in (0.0, 29.9, 59.9):
        age[0] = seconds
        assert pinger.tick()
        assert receive(sock) == ["WATCHDOG=1"]
    sock.settimeout(0.2)
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        for seconds in (60.0, 90.0, 3600.0):
            age[0] = seconds
            assert not pinger.tick()
            with pytest.raises(TimeoutError):
                sock.recv(4096)
        assert [r.levelname for r in caplog.records] == ["ERROR"], "withheld pings are logged once"
        assert "no progress for 60.0 s" in caplog.records[0].getMessage()
        age[0] = 1.0
        assert pinger.tick()
    assert receive(sock) == ["WATCHDOG=1"]
    assert (pinger.pings, pinger.withheld) == (4, 0)
    assert "pings resumed" in caplog.records[-1].getMessage()


def test_watchdog_thread_pings_at_start_and_stops(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    pinger = WatchdogPinger(SystemdNotifier(path), every_s=0.05, stall_s=0.1, progress_age=lambda: 0.0)
    pinger.start()
    try:
        assert [receive(sock) for _ in range(3)] == [["WATCHDOG=1"]] * 3
    finally:
        pinger.stop()
    assert pinger.pings >= 3


@pytest.mark.parametrize("every_s, stall_s", [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_watchdog_refuses_nonpositive_periods(every_s: float, stall_s: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        WatchdogPinger(SystemdNotifier(None), every_s, stall_s, progress_age=lambda: 0.0)
