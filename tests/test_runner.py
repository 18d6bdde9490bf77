"""Runner pieces that need no broker: the log de-duplication and the one-line log format."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from agent.runner import RepeatFilter, setup_logging


def _record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("librdkafka", level, __file__, 1, message, None, None)


def test_repeat_filter_passes_one_per_shape_and_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("agent.runner.time.monotonic", lambda: now[0])
    keep = RepeatFilter(window_s=30.0)
    assert keep.filter(_record("Connect to 127.0.0.1:9092 failed (after 0ms)"))
    assert not keep.filter(_record("Connect to 127.0.0.1:9092 failed (after 3ms)"))
    assert not keep.filter(_record("Connect to 127.0.0.1:9092 failed (after 51ms)"))
    assert keep.filter(_record("another message")), "a different message is not suppressed"
    assert keep.filter(_record("Connect to 127.0.0.1:9092 failed (after 0ms)", logging.WARNING)), (
        "other level"
    )
    now[0] += 30.0
    passed = _record("Connect to 127.0.0.1:9092 failed (after 7ms)")
    assert keep.filter(passed)
    assert passed.getMessage().endswith("(2 similar suppressed)")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging configures the process's root logger; put pytest's back afterwards."""
    root, kafka = logging.getLogger(), logging.getLogger("librdkafka")
    handlers, level, filters = list(root.handlers), root.level, list(kafka.filters)
    yield
    root.handlers[:], kafka.filters[:] = handlers, filters
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_log_records_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    log = logging.getLogger("agent.test")
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        log.exception("failed")
    log.debug("not shown at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert " ERROR agent.test: failed | Traceback" in lines[0] and "second line" in lines[0]
