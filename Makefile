# The two commands of the README: `make serve` runs the proxy on the embedded
# default (SQLite, in-process gate); `make test` runs lint, types and the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test bench install install-test lint types pytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet ".[test]"

serve: install
	$(BIN)/taximeter serve

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install-test
	$(BIN)/mypy -p taximeter.proxy -p taximeter.pricing -p taximeter.store

pytest: install-test
	$(BIN)/python -m pytest

test: lint types pytest

# The benchmark (needs wrk, Postgres and Redis); writes bench/REPORT.md and bench/results.jsonl.
bench: install-test
	$(BIN)/python -m bench
