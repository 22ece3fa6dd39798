# compliance-worker: `make run` and `make test` set up everything they need on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
KAFKA_PORT ?= 9092
export KAFKA_PORT

.PHONY: help install system-deps run test test-unit test-integration test-reliability bench kafka-up kafka-down clean

help:
	@echo "make run          local Kafka + worker + sample feed, with a live summary (Ctrl-C stops all)"
	@echo "make test         the whole test suite, real Kafka broker included"
	@echo "make test-reliability  only the fault tests (crash, failover, outage, exactly-once, fuzz, TLS)"
	@echo "make bench        the benchmarks, one JSON line each"
	@echo "make kafka-up     start the local Kafka broker on 127.0.0.1:\$$KAFKA_PORT (default 9092)"
	@echo "make kafka-down   stop it"

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

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
