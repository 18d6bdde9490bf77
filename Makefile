# The two commands of the README: `make demo` and `make test`.
# Each creates (or reuses) .venv and installs what it needs by itself.
# Pass demo flags with DEMO_ARGS, e.g. make demo DEMO_ARGS='--events 200 --exit-after-replay'.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: demo test lint venv kafka-start kafka-stop clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/anomaly-agent demo $(DEMO_ARGS)

# The suite mostly waits (brokers, agents, time windows): TEST_WORKERS processes run it in
# parallel, one file per worker at a time, sharing one broker, one Alertmanager and the trained
# bundles (tests/shared_resources.py); the slowest files are handed out first (tests/conftest.py;
# --no-loadscope-reorder: xdist would otherwise hand out the files with the most tests first, and
# the one-test chaos run, the longest, last).
# TEST_WORKERS=0 runs it in this process. --durations=30: where the time goes, in every CI log.
TEST_WORKERS ?= 4

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

kafka-start:
	deploy/local/kafka.sh start

kafka-stop:
	deploy/local/kafka.sh stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
