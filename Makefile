# Two commands on a fresh machine:  `make demo` (install + data to served predictions), `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: install demo test browser-check lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found (StreamFlow needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/streamflow demo $(DEMO_ARGS)

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest

# Headless Chromium over a freshly built stack (needs Debian's chromium: apt-get install chromium).
browser-check: install
	$(BIN)/pytest -m slow tests/e2e

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: install
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .streamflow
