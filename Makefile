# Two commands from a fresh clone: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench migrate worker beat demo clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need Python 3.11+ on PATH (python3.11 or python3); or set PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/emr-hub migrate
	$(BIN)/emr-hub demo
	$(BIN)/emr-hub serve --host 127.0.0.1 --port 8000

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

migrate: $(STAMP)
	$(BIN)/emr-hub migrate

worker: $(STAMP)
	$(BIN)/emr-hub worker

beat: $(STAMP)
	$(BIN)/emr-hub beat

demo: $(STAMP)
	$(BIN)/emr-hub demo

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
