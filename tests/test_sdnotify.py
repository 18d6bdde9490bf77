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

from agent.sdnotify import SystemdNotifier, watchdog_interval


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
        ("1000000", str(os.getpid()), 0.5),
        ("30000000", str(os.getpid() + 1), None),
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    assert watchdog_interval(usec, pid) == expected
