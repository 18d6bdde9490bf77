"""Shared fixtures: Kafka (kafka_fixtures.py), models (model_fixtures.py), agents (agent_helpers.py)."""

from pathlib import Path

import pytest

pytest_plugins = ["shared_resources", "kafka_fixtures", "model_fixtures", "agent_helpers", "secured_broker"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS = REPO_ROOT.parent / "shared" / "datasets"

# The files that take longest, longest first (`pytest --durations=0`, summed per file, 2026-12-06:
# 2-core machine, 4 workers). `make test` hands whole files to the workers in collection order
# (--dist loadfile --no-loadscope-reorder), so a long file collected last is the run's tail: these
# are collected first.
# Only the order changes, never what runs; a file not listed keeps its place after them.
SLOW_FIRST = (
    "integration/test_secured_cluster.py",
    "integration/test_alert_grouping.py",
    "integration/test_chaos.py",
    "integration/test_agent_sessions.py",
    "integration/test_pattern_rates.py",
    "integration/test_agent_lifecycle.py",
    "integration/test_agent_crash.py",
    "test_detector_contract.py",
    "test_export_parity.py",
    "test_cli_training.py",
    "test_train_values.py",
    "ops/test_systemd_notify.py",
    "integration/test_agent_e2e.py",
    "test_demo.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the slow files first (a stable sort: the order within a file is kept)."""
    tests = Path(__file__).resolve().parent
    missing = [name for name in SLOW_FIRST if not (tests / name).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_FIRST names files that do not exist: {missing}")
    rank = {(tests / name).resolve(): i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.resolve(), len(SLOW_FIRST)))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The labelled dev data (../shared/datasets); CI has it at the same relative path."""
    if not DATASETS.is_dir():
        pytest.fail(f"dev datasets not found at {DATASETS}; they are expected beside the checkout")
    return DATASETS
