"""The agent under the unit's notify protocol, with a real NOTIFY_SOCKET listener: READY=1 once
it can work, WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1 then READY=1 on SIGHUP (the unit's
ExecReload), STOPPING=1 on SIGTERM and exit 0 within TimeoutStopSec.

It runs with the kernel's memory-deny-write-execute (PR_SET_MDWE) on, the protection the unit's
MemoryDenyWriteExecute=yes gives: onnxruntime, numpy and librdkafka must run without W+X pages.
"""

from __future__ import annotations

import ctypes
import itertools
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_harness import agent_env, produce, running_agent, traffic, wait_until_ready, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1
# Sets MDWE on itself, then execs the agent: the flag survives execve (Linux >= 6.3).
MDWE_WRAPPER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE failed: errno %d' % ctypes.get_errno())\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0)) >= 0


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(Path(directory) / "notify"))
        sock.settimeout(0.5)
        try:
            yield sock
        finally:
            sock.close()


def _collect(
    sock: socket.socket, seen: list[tuple[float, str]], until: Callable[[], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until():
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        now = time.monotonic()
        seen.extend((now, line) for line in data.decode().splitlines() if line)


def test_notify_protocol_under_mdwe(
    notify_socket: socket.socket,
    ops_bundle: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    assert _mdwe_supported(), (
        "this kernel lacks PR_SET_MDWE (Linux >= 6.3): cannot check MemoryDenyWriteExecute"
    )
    config = write_config(
        tmp_path,
        bootstrap=kafka_bootstrap,
        group=make_group(),
        bundle=ops_bundle,
        input_topic=make_topic(partitions=2),
        alerts_topic=make_topic(),
        dead_letter_topic=make_topic(),
    )
    watchdog_usec = 2_000_000
    env = agent_env(NOTIFY_SOCKET=notify_socket.getsockname(), WATCHDOG_USEC=str(watchdog_usec))
    log = tmp_path / "agent.log"
    seen: list[tuple[float, str]] = []

    def lines() -> list[str]:
        return [line for _, line in seen]

    with running_agent(config, log, env=env, prefix=(sys.executable, "-c", MDWE_WRAPPER)) as proc:
        _collect(notify_socket, seen, lambda: "READY=1" in lines() or proc.poll() is not None, 180)
        assert "READY=1" in lines(), f"no READY=1 (got {lines()}):\n{log.read_text()}"
        wait_until_ready(config, proc, log)

        # Work through the embedder and the transactional producer while MDWE is on.
        produce(kafka_bootstrap, config.input_topic, traffic(datasets_dir, 60, seed=3))
        _collect(notify_socket, seen, lambda: False, 6)
        pings = [t for t, line in seen if line == "WATCHDOG=1"]
        assert len(pings) >= 3, f"watchdog pings: {lines()}\n{log.read_text()}"
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # half of WATCHDOG_USEC (1 s), never as late as the full period
        assert max(gaps) < watchdog_usec / 1e6, gaps

        # systemctl reload -> ExecReload=/bin/kill -HUP $MAINPID
        proc.send_signal(signal.SIGHUP)
        before = len(seen)
        _collect(notify_socket, seen, lambda: "READY=1" in lines()[before:] or proc.poll() is not None, 60)
        after_hup = lines()[before:]
        assert "RELOADING=1" in after_hup, after_hup
        assert after_hup.index("RELOADING=1") < after_hup.index("READY=1")

        # systemctl stop -> SIGTERM; must exit 0 within TimeoutStopSec (45 s)
        proc.terminate()
        started = time.monotonic()
        before = len(seen)
        _collect(notify_socket, seen, lambda: proc.poll() is not None, 45)
        code = proc.wait(timeout=5)
        assert "STOPPING=1" in lines()[before:], lines()[before:]
        assert code == 0, log.read_text()
        assert time.monotonic() - started < 45

    text = log.read_text()
    assert "Traceback" not in text, text
