# The two commands of the README: `make serve` runs the proxy on the embedded
# default (SQLite, in-process gate); `make test` runs lint, types and the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test bench install install-test lint types pytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installed once, and again only when the code or pyproject.toml changes.
# setuptools builds in ./build and keeps there the files of modules since
# renamed or deleted, which a later install would ship: it goes before and after.
SOURCES := pyproject.toml $(shell find proxy pricing store -type f ! -path '*/__pycache__/*')

$(VENV)/.installed: $(BIN)/python $(SOURCES)
	rm -rf build taximeter.egg-info
	$(BIN)/python -m pip install --quiet .
	rm -rf build taximeter.egg-info
	touch $@

$(VENV)/.installed-test: $(BIN)/python $(SOURCES)
	rm -rf build taximeter.egg-info
	$(BIN)/python -m pip install --quiet ".[test]"
	rm -rf build taximeter.egg-info
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

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
