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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


class Notifications:
    """systemd's side of the notify socket: a thread receives every datagram as it arrives and
    stamps it with CLOCK_MONOTONIC (shared by every process of the machine), so the gaps between
    pings are the agent's, whatever the test is doing meanwhile."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._seen: list[tuple[float, str]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            with self._lock:
                self._seen.extend((now, line) for line in data.decode().splitlines() if line)

    def seen(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._seen)

    def lines(self, since: int = 0) -> list[str]:
        return [line for _, line in self.seen()[since:]]

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, line in self.seen() if line == "WATCHDOG=1" and t >= since]

    def wait_for(self, until: Callable[[], bool], timeout: float) -> bool:
        """Poll ``until`` for at most ``timeout`` seconds (a deadline against hangs only)."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        listener = Notifications(Path(directory))
        try:
            yield listener
        finally:
            listener.close()


SLOW_EMBEDDER = Path(__file__).with_name("slow_embedder.py")


def _embed_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pings(seen: list[tuple[float, str]]) -> list[float]:
    return [t for t, line in seen if line == "WATCHDOG=1"]


@pytest.mark.integration
@pytest.mark.slow
def test_notify_protocol_under_memory_deny_write_execute(
    notifications: Notifications,
    ops_bundle: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """READY, RELOADING/READY, STOPPING and exit 0 under the unit's seccomp filters, and the
    watchdog's first half: a batch made slow on purpose (every model run sleeps half of
    WatchdogSec, eight texts per run) takes several WatchdogSec, and WATCHDOG=1 keeps coming
    through it, never as late as WatchdogSec (when systemd would kill the agent)."""
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
    watchdog_s = 4.0
    embed_log = tmp_path / "embed.jsonl"
    env = agent_env(
        NOTIFY_SOCKET=notifications.path,
        WATCHDOG_USEC=str(int(watchdog_s * 1e6)),
        SLOW_EMBED_SECONDS=str(watchdog_s / 2),
        SLOW_EMBED_BATCH="8",
        SLOW_EMBED_LOG=str(embed_log),
        ANOMALY_AGENT_BATCH__MAX_SIZE="256",
    )
    log = tmp_path / "agent.log"
    prefix = (sys.executable, str(SECCOMP_FILTER), sys.executable, str(SLOW_EMBEDDER))
    with running_agent(config, log, env=env, prefix=prefix) as proc:
        notifications.wait_for(lambda: "READY=1" in notifications.lines() or proc.poll() is not None, 180)
        assert "READY=1" in notifications.lines(), f"no READY=1:\n{log.read_text()}"
        wait_until_ready(config, proc, log)

        # Work through the embedder and the transactional producer under the filter.
        produce(kafka_bootstrap, config.input_topic, traffic(datasets_dir, 60, seed=3))
        processed = _wait_processed(config.metrics_url, 54, proc, timeout=600)
        assert processed >= 54, f"{processed} of 54 good events scored:\n{log.read_text()}"
        slow = [e for e in _embed_log(embed_log) if e["event"] == "embed" and e["runs"] >= 2]
        assert slow, f"no batch took several model runs: {_embed_log(embed_log)}"
        longest = max(slow, key=lambda e: e["end"] - e["start"])
        assert longest["end"] - longest["start"] >= 2 * watchdog_s, f"not slow enough: {longest}"
        notifications.wait_for(lambda: False, watchdog_s)
        pings = notifications.pings(since=longest["start"] - watchdog_s)
        assert pings[0] <= longest["start"] and pings[-1] >= longest["end"], (pings, longest)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < watchdog_s, f"systemd would have killed a busy agent: gaps {gaps}"

        # systemctl reload -> ExecReload=/bin/kill -HUP $MAINPID
        before = len(notifications.seen())
        proc.send_signal(signal.SIGHUP)
        notifications.wait_for(
            lambda: "READY=1" in notifications.lines(before) or proc.poll() is not None, 60
        )
        after_hup = notifications.lines(before)
        assert "RELOADING=1" in after_hup, after_hup
        assert after_hup.index("RELOADING=1") < after_hup.index("READY=1")

        # systemctl stop -> SIGTERM; must exit 0 within TimeoutStopSec (45 s)
        before = len(notifications.seen())
        proc.terminate()
        code = proc.wait(timeout=45)
        assert code == 0, log.read_text()
        assert notifications.wait_for(lambda: "STOPPING=1" in notifications.lines(before), 5)

    text = log.read_text()
    assert "Traceback" not in text, text


@pytest.mark.integration
@pytest.mark.slow
def test_watchdog_pings_stop_when_the_loop_is_frozen(
    notifications: Notifications,
    ops_bundle: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    datasets_dir: Path,
    tmp_path: Path,
) -> None:
    """The watchdog's second half: pings come while the agent idles on an empty topic; when the
    loop is frozen on purpose (a model run that never returns) they stop, so systemd would kill
    the agent (a whole WatchdogSec passes without one); SIGTERM still says STOPPING=1 and the
    grace timer ends the stuck process with exit 1."""
    config = write_config(
        tmp_path,
        bootstrap=kafka_bootstrap,
        group=make_group(),
        bundle=ops_bundle,
        input_topic=make_topic(partitions=2),
        alerts_topic=make_topic(),
        dead_letter_topic=make_topic(),
    )
    watchdog_s = 2.0
    freeze, embed_log = tmp_path / "freeze", tmp_path / "embed.jsonl"
    env = agent_env(
        NOTIFY_SOCKET=notifications.path,
        WATCHDOG_USEC=str(int(watchdog_s * 1e6)),
        SLOW_EMBED_FREEZE=str(freeze),
        SLOW_EMBED_LOG=str(embed_log),
        ANOMALY_AGENT_LIFECYCLE__SHUTDOWN_GRACE_SECONDS="3",
    )
    log = tmp_path / "agent.log"

    def frozen_at() -> float | None:
        return next((e["at"] for e in _embed_log(embed_log) if e["event"] == "frozen"), None)

    with running_agent(config, log, env=env, prefix=(sys.executable, str(SLOW_EMBEDDER))) as proc:
        wait_until_ready(config, proc, log)
        idle_from = time.monotonic()
        notifications.wait_for(lambda: False, 3 * watchdog_s)
        idle = notifications.pings(since=idle_from)
        assert len(idle) >= 2 and max(b - a for a, b in itertools.pairwise(idle)) < watchdog_s, idle

        freeze.touch()
        produce(kafka_bootstrap, config.input_topic, traffic(datasets_dir, 20, seed=5))
        notifications.wait_for(lambda: frozen_at() is not None or proc.poll() is not None, 120)
        stuck = frozen_at()
        assert stuck is not None, f"the loop never reached the embedder:\n{log.read_text()}"
        # Pings may go on for up to WatchdogSec after the loop got stuck, then never again.
        notifications.wait_for(lambda: False, 4 * watchdog_s)
        silent = time.monotonic() - max(notifications.pings())
        assert silent >= 2 * watchdog_s, f"pings went on after the freeze at {stuck}: {notifications.pings()}"
        assert proc.poll() is None, "the stuck agent exited on its own"
        assert "watchdog pings withheld" in log.read_text()

        before = len(notifications.seen())
        proc.terminate()
        code = proc.wait(timeout=60)
        assert code == 1, f"exit {code}, expected 1 (grace period exceeded):\n{log.read_text()}"
        assert notifications.wait_for(lambda: "STOPPING=1" in notifications.lines(before), 5)
