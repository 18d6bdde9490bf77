"""HealthState semantics and the probe endpoints over real HTTP on an ephemeral port."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agent.health import HealthServer, HealthState, serve_health


def get(server: HealthServer, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers["Content-Type"] == "application/json"
        return exc.code, json.loads(exc.read())


def make_ready(state: HealthState) -> None:
    state.set_model_loaded(True)
    state.set_group_joined(True)
    state.set_broker_reachable(True)


@pytest.fixture
def state() -> HealthState:
    return HealthState(stall_seconds=30.0)


@pytest.fixture
def server(state: HealthState) -> Iterator[HealthServer]:
    srv = serve_health(state, "127.0.0.1", 0, stall_seconds=0.5)
    try:
        yield srv
    finally:
        srv.shutdown()


def test_healthy_within_the_stall_window_then_stalled(state: HealthState) -> None:
    state.beat(now=100.0)
    ok, detail = state.healthy(now=129.0)
    assert ok and detail["status"] == "ok" and detail["iterations"] == 1
    ok, detail = state.healthy(now=131.0)
    assert not ok
    assert detail == {
        "status": "stalled",
        "seconds_since_progress": 31.0,
        "seconds_pending_without_commit": None,
        "seconds_since_commit": None,
        "stall_seconds": 30.0,
        "iterations": 1,
    }
    assert state.healthy(now=131.0, stall_seconds=60.0)[0]


def test_turning_without_committing_is_unhealthy_while_the_broker_is_reachable(state: HealthState) -> None:
    """A batch that aborts and retries forever (the loop keeps turning) fails liveness after
    stall_seconds; retries of the same batch do not reset the clock, a commit or an empty poll does."""
    state.set_broker_reachable(True)
    state.work_pending(now=100.0)
    for t in (110.0, 120.0, 131.0):
        state.beat(now=t)
        state.work_pending(now=t)
    ok, detail = state.healthy(now=131.0)
    assert not ok and detail["status"] == "not_committing"
    assert detail["seconds_pending_without_commit"] == 31.0

    state.set_broker_reachable(False)
    assert state.healthy(now=131.0)[0], "an outage is readiness's business, not a reason to restart"
    state.set_broker_reachable(True)

    state.work_committed(now=131.0)
    ok, detail = state.healthy(now=131.0)
    assert ok and detail["seconds_since_commit"] == 0.0
    state.work_pending(now=131.0)
    state.work_idle()
    assert state.healthy(now=170.0, stall_seconds=60.0)[0]


def test_start_up_counts_as_progress() -> None:
    assert HealthState(stall_seconds=5).healthy()[0]


def test_invalid_stall_seconds() -> None:
    with pytest.raises(ValueError):
        HealthState(stall_seconds=0)


def test_ready_needs_model_group_and_broker(state: HealthState) -> None:
    ok, detail = state.ready()
    assert not ok
    assert detail["failing"] == ["model_loaded", "group_joined", "broker_reachable"]
    make_ready(state)
    ok, detail = state.ready()
    assert ok and detail["status"] == "ok" and detail["failing"] == []
    state.set_broker_reachable(False)
    assert state.ready()[1]["failing"] == ["broker_reachable"]


def test_a_member_without_partitions_is_ready(state: HealthState) -> None:
    """More agents than partitions: an idle group member is a standby, not a failure."""
    make_ready(state)
    state.set_assigned(False)
    ok, detail = state.ready()
    assert ok and detail["partitions_assigned"] is False
    state.set_assigned(True)
    assert state.ready()[1]["partitions_assigned"] is True


def test_stopping_is_not_ready(state: HealthState) -> None:
    make_ready(state)
    state.set_stopping()
    ok, detail = state.ready()
    assert not ok and detail["failing"] == ["not_stopping"]


def test_concurrent_beats_are_all_counted(state: HealthState) -> None:
    def beat_many() -> None:
        for _ in range(1000):
            state.beat()

    threads = [threading.Thread(target=beat_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state.healthy()[1]["iterations"] == 4000


def test_readyz_over_http(server: HealthServer, state: HealthState) -> None:
    status, body = get(server, "/readyz")
    assert status == 503 and body["status"] == "not_ready"
    make_ready(state)
    status, body = get(server, "/readyz")
    assert status == 200 and body["checks"]["group_joined"] is True


def test_healthz_over_http_uses_the_servers_stall_seconds(server: HealthServer, state: HealthState) -> None:
    state.beat()
    status, body = get(server, "/healthz")
    assert status == 200 and body["stall_seconds"] == 0.5
    time.sleep(0.7)
    status, body = get(server, "/healthz")
    assert status == 503 and body["status"] == "stalled"
    state.beat()
    assert get(server, "/healthz?verbose=1")[0] == 200


def test_unknown_path_is_404(server: HealthServer) -> None:
    status, body = get(server, "/metrics")
    assert status == 404 and "/healthz" in body["error"]


def test_shutdown_stops_serving(state: HealthState) -> None:
    srv = serve_health(state, "127.0.0.1", 0, stall_seconds=1.0)
    port = srv.port
    assert port > 0
    srv.shutdown()
    assert not srv.thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
