"""The agent under the unit's notify protocol, with a real NOTIFY_SOCKET listener: READY=1 once
it can work, WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1 then READY=1 on SIGHUP (the unit's
ExecReload), STOPPING=1 on SIGTERM and exit 0 within TimeoutStopSec.

It runs under the seccomp filters systemd installs for the unit's MemoryDenyWriteExecute=yes and
RestrictAddressFamilies (tests/ops/systemd_seccomp.py) plus NoNewPrivileges: loading the bundle,
embedding with onnxruntime, scoring with numpy, resolving the broker's name and producing with
librdkafka must work without writable-executable memory or netlink sockets.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from agent_harness import agent_env, produce, running_agent, traffic, wait_until_ready, write_config
from prometheus_client.parser import text_string_to_metric_families

SECCOMP_FILTER = Path(__file__).with_name("systemd_seccomp.py")
PROBE = """
import ctypes, json, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
out = {}
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
    out["mmap_wx"] = "allowed"
except PermissionError:
    out["mmap_wx"] = "denied"
buf = mmap.mmap(-1, 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
out["mprotect_x"] = "allowed" if libc.mprotect(addr, 4096, mmap.PROT_READ | mmap.PROT_EXEC) == 0 else "denied"
out["mprotect_r"] = "allowed" if libc.mprotect(addr, 4096, mmap.PROT_READ) == 0 else "denied"
import socket
for name, family in (("netlink", socket.AF_NETLINK), ("inet6", socket.AF_INET6), ("unix", socket.AF_UNIX)):
    try:
        socket.socket(family, socket.SOCK_DGRAM).close()
        out[name] = "allowed"
    except OSError as exc:
        out[name] = "denied" if exc.errno == 97 else str(exc)
print(json.dumps(out))
"""


def _probe(prefix: list[str]) -> dict[str, str]:
    proc = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def test_filter_denies_what_systemd_denies() -> None:
    """The wrapper is the real protection: W+X mappings, adding PROT_EXEC and sockets of other
    families (netlink) fail under it only."""
    allowed = {"mmap_wx", "mprotect_x", "mprotect_r", "netlink", "inet6", "unix"}
    assert _probe([]) == dict.fromkeys(allowed, "allowed")
    confined = _probe([sys.executable, str(SECCOMP_FILTER)])
    denied = {"mmap_wx", "mprotect_x", "netlink"}
    assert confined == {k: "denied" if k in denied else "allowed" for k in allowed}


def _wait_processed(
    metrics_url: str, expected: float, proc: subprocess.Popen[bytes], timeout: float = 120
) -> float:
    """anomaly_agent_events_processed_total once it reaches ``expected`` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline and proc.poll() is None:
        for family in text_string_to_metric_families(requests.get(metrics_url, timeout=5).text):
            if family.name == "anomaly_agent_events_processed":
                value = sum(s.value for s in family.samples if s.name.endswith("_total"))
        if value >= expected:
            break
        time.sleep(0.5)
    return value


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


@pytest.mark.integration
@pytest.mark.slow
def test_notify_protocol_under_memory_deny_write_execute(
    notify_socket: socket.socket,
    ops_bundle: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    # A host name, so the agent resolves it through glibc with netlink sockets refused.
    bootstrap = kafka_bootstrap.replace("127.0.0.1:", "localhost:")
    config = write_config(
        tmp_path,
        bootstrap=bootstrap,
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

    with running_agent(config, log, env=env, prefix=(sys.executable, str(SECCOMP_FILTER))) as proc:
        _collect(notify_socket, seen, lambda: "READY=1" in lines() or proc.poll() is not None, 180)
        assert "READY=1" in lines(), f"no READY=1 (got {lines()}):\n{log.read_text()}"
        wait_until_ready(config, proc, log)

        # Work through the embedder and the transactional producer under the filter.
        produce(kafka_bootstrap, config.input_topic, traffic(datasets_dir, 60, seed=3))
        processed = _wait_processed(config.metrics_url, 54, proc)
        assert processed >= 54, f"{processed} of 54 good events scored:\n{log.read_text()}"
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
