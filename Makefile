# compliance-worker: `make run` and `make test` set up everything they need on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
KAFKA_PORT ?= 9092
export KAFKA_PORT

.PHONY: help install lock system-deps run test test-unit test-integration test-reliability bench kafka-up kafka-down clean

help:
	@echo "make run          local Kafka + worker + sample feed, with a live summary (Ctrl-C stops all)"
	@echo "make test         the whole test suite, real Kafka broker included"
	@echo "make test-reliability  only the fault tests (crash, failover, outage, exactly-once, fuzz, TLS)"
	@echo "make bench        the benchmarks, one JSON line each"
	@echo "make kafka-up     start the local Kafka broker on 127.0.0.1:\$$KAFKA_PORT (default 9092)"
	@echo "make kafka-down   stop it"
	@echo "make lock         re-pin requirements/*.lock (with hashes) after a dependency change in pyproject.toml"

# Every package as requirements/test.lock pins it (with hashes), then the project itself without resolving again.
$(INSTALLED): pyproject.toml requirements/test.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements/test.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# After changing a dependency in pyproject.toml: resolve again, pinned with hashes (tests/unit/test_lock.py checks).
UV_VERSION := 0.13.9
LOCK_ARGS := --generate-hashes --python-version 3.11 --universal --quiet
lock: $(INSTALLED)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml $(LOCK_ARGS) -o requirements/runtime.lock
	$(BIN)/uv pip compile pyproject.toml --extra test --extra bench $(LOCK_ARGS) -o requirements/test.lock

install: $(INSTALLED) system-deps

system-deps:
	@scripts/system-deps.sh

kafka-up:
	@scripts/kafka.sh up

kafka-down:
	@scripts/kafka.sh down

run: install
	@$(BIN)/python scripts/run.py

test: install
	$(BIN)/pytest

test-unit: $(INSTALLED)
	$(BIN)/pytest tests/unit

test-integration: install
	$(BIN)/pytest tests/integration

test-reliability: install
	$(BIN)/pytest -m reliability

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	-scripts/kafka.sh down
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
