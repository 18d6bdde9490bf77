"""Shared fixtures: Kafka (kafka_fixtures.py), models (model_fixtures.py), agents (agent_helpers.py)."""

from pathlib import Path

import pytest

pytest_plugins = ["shared_resources", "kafka_fixtures", "model_fixtures", "agent_helpers", "secured_broker"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The labelled dev data (../shared/datasets); CI has it at the same relative path."""
    if not DATASETS.is_dir():
        pytest.fail(f"dev datasets not found at {DATASETS}; they are expected beside the checkout")
    return DATASETS
