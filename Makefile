# Two commands on a fresh machine:  `make demo` (install + data to served predictions), `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements/dev.lock
DEMO_ARGS ?=
# The locks are resolved for the platform every install of them runs on (CI, the image, this machine).
UV_COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 pyproject.toml requirements/build.in

.PHONY: install demo test browser-check lint lock bench clean

# Exactly the locked versions, each checked against its hash; nothing else is resolved or fetched.
# The lock installed is kept in the environment: every model version records its sha256.
$(STAMP): $(LOCK) pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found (StreamFlow needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	cp $(LOCK) $(VENV)/streamflow.lock
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

# After a change of pyproject.toml's dependencies: the three locks, consistent with each other (the
# image's base and ray locks take their versions from the development lock).
lock: install
	$(UV_COMPILE) --extra dev --extra ray -o requirements/dev.lock
	$(UV_COMPILE) --extra ray -c requirements/dev.lock -o requirements/ray.lock
	$(UV_COMPILE) -c requirements/dev.lock -o requirements/base.lock

bench: install
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .streamflow
